import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel, ViTMAEConfig, ViTMAEForPreTraining

from hf_mim import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel, patchify
from hf_mim.convert import ConversionError, convert_checkpoint, convert_mae_checkpoint
from hf_mim.modeling.mae import METHOD
from hf_mim.modeling.masking import learned_mask_counts
from hf_mim.modeling.spec import TINY_VIT

from .launch import hf_mim_command
from .model_tester import ModelTesterMixin, PixelsOnly, trainer_args

TINY = METHOD.tiny_config


def tiny_config(**overrides) -> MAEConfig:
    return MAEConfig(**{**TINY, **overrides})


class TestMAE(ModelTesterMixin):
    config_class = MAEConfig
    encoder_class = MAEModel
    pretraining_class = MAEForPreTraining
    classification_class = MAEForImageClassification

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def pretraining_inputs(self, config, seed=0):
        g = torch.Generator().manual_seed(seed + 1)
        return {
            "pixel_values": self.pixel_values(config, seed),
            "noise": torch.rand(self.batch_size, config.num_patches, generator=g),
        }

    def check_pretraining_outputs(self, config, outputs, inputs):
        b, length = self.batch_size, config.num_patches
        assert outputs.logits.shape == (b, length, config.patch_size**2 * config.num_channels)
        assert outputs.mask.shape == (b, length) and outputs.ids_restore.shape == (b, length)
        kept = int(length * (1 - config.mask_ratio))
        assert outputs.mask.sum(dim=1).tolist() == [length - kept] * b
        # noise semantics: the lowest-noise patches are the visible ones
        lowest = inputs["noise"].argsort(dim=1)[:, :kept]
        assert (outputs.mask.gather(1, lowest) == 0).all()


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(image_size=30), "image_size"),
        (dict(image_size=[32, 36]), "image_size"),
        (dict(hidden_size=30), "hidden_size"),
        (dict(mask_ratio=0.0), "mask_ratio"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=-0.2), "mask_ratio"),
        (dict(mask_ratio=1e-18), "mask_ratio"),  # rounds to masking nothing
        (dict(mask_ratio=0.99), "mask_ratio"),  # keeps no patch of 16
        (dict(decoder_hidden_size=18), "decoder_hidden_size"),
        (dict(position_embedding_type="rope"), "position_embedding_type"),
        (dict(pooling="max"), "pooling"),
        (dict(hidden_act="nope"), "hidden_act"),
        (dict(image_mean=[0.5, 0.5]), "image_mean"),
        (dict(drop_path_rate=1.0), "drop_path_rate"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "overrides, field",
    [
        # divisible by 4, so the sin-cos table's own check passes: only the heads check can reject these (issue 17)
        (dict(hidden_size=36, num_attention_heads=8), "hidden_size"),
        (dict(decoder_hidden_size=36, decoder_num_attention_heads=8), "decoder_hidden_size"),
    ],
)
def test_width_must_divide_into_heads(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}=36 is invalid: must be divisible by .*num_attention_heads=8"):
        tiny_config(**overrides)


def test_config_keeps_vitmae_field_names_and_documents_each():
    reference = set(ViTMAEConfig().to_dict())
    ours = set(tiny_config().to_dict())
    named_in_issue = {
        "image_size",
        "patch_size",
        "num_channels",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "layer_norm_eps",
        "qkv_bias",
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
        "mask_ratio",
        "norm_pix_loss",
    }
    assert named_in_issue <= reference & ours
    assert MAEConfig.model_type == "hf_mim_mae"


def test_non_square_images_and_other_channel_counts():
    for overrides in (dict(image_size=[32, 48]), dict(num_channels=1), dict(num_channels=4)):
        config = tiny_config(**overrides)
        model = MAEForPreTraining(config)
        h, w = (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
        pixels = torch.randn(2, config.num_channels, h, w)
        out = model(pixel_values=pixels)
        assert out.logits.shape == (2, config.num_patches, 64 * config.num_channels)
        out.loss.backward()
        # the reconstruction of the exact target gives zero loss: patchify, loss and unpatchify agree
        target = model.patchify(pixels)
        assert torch.equal(model.unpatchify(target, (h, w)), pixels)


# ----------------------------------------------------------------------------------------------------------
# Numerics
# ----------------------------------------------------------------------------------------------------------


def test_loss_matches_hand_computation():
    config = tiny_config(norm_pix_loss=False)
    model = MAEForPreTraining(config).eval()
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=noise)
    target = patchify(pixels, 8)
    per_patch = ((out.logits - target) ** 2).mean(-1)
    masked = [per_patch[b, i] for b in range(2) for i in range(16) if out.mask[b, i] == 1]
    torch.testing.assert_close(out.loss, torch.stack(masked).mean(), rtol=1e-6, atol=0)

    config = tiny_config(norm_pix_loss=True)
    model = MAEForPreTraining(config).eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=noise)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True, unbiased=True)
    normalised = (target - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((out.logits - normalised) ** 2).mean(-1)
    torch.testing.assert_close(out.loss, (per_patch * out.mask).sum() / out.mask.sum(), rtol=1e-6, atol=0)


def test_only_masked_patches_drive_the_loss():
    model = MAEForPreTraining(tiny_config()).eval()
    pixels, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=noise)
    # Changing a visible patch's *target* pixels alone must not move the loss; changing a masked one must.
    # The encoder sees visible pixels, so compare with the loss function directly.
    target_changed = pixels.clone()
    visible = int((out.mask[0] == 0).nonzero()[0])
    row, col = divmod(visible, 4)
    target_changed[..., row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 5.0
    assert torch.equal(model.forward_loss(target_changed, out.logits, out.mask), out.loss)
    masked = int((out.mask[0] == 1).nonzero()[0])
    row, col = divmod(masked, 4)
    target_changed[..., row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += torch.randn(3, 8, 8)
    assert not torch.equal(model.forward_loss(target_changed, out.logits, out.mask), out.loss)


def test_visible_only_encoding_ignores_masked_pixels():
    model = MAEForPreTraining(tiny_config()).eval()
    pixels, noise = torch.randn(1, 3, 32, 32), torch.rand(1, 16)
    with torch.no_grad():
        latent, mask, *_ = model.forward_encoder(pixels, noise)
        masked = int((mask[0] == 1).nonzero()[0])
        row, col = divmod(masked, 4)
        pixels[..., row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = 100.0
        latent_again, *_ = model.forward_encoder(pixels, noise)
    assert latent.shape == (1, 1 + 4, 32)
    assert torch.equal(latent, latent_again)


# ----------------------------------------------------------------------------------------------------------
# Conversion and parity with transformers
# ----------------------------------------------------------------------------------------------------------


def transformers_mae(num_channels=3, norm_pix_loss=False, qkv_bias=True) -> ViTMAEForPreTraining:
    torch.manual_seed(0)
    config = ViTMAEConfig(
        **{k: v for k, v in TINY.items()},
        num_channels=num_channels,
        norm_pix_loss=norm_pix_loss,
        qkv_bias=qkv_bias,
        layer_norm_eps=1e-12,
    )
    model = ViTMAEForPreTraining(config).eval()
    # transformers zero-initialises biases and norms, and (5.x) leaves fresh position tables at zero: randomise
    # every tensor, tables included, so that no mapping slip can hide behind a zero.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.mark.parametrize(
    "variant", [dict(), dict(norm_pix_loss=True), dict(num_channels=1), dict(qkv_bias=False)], ids=str
)
def test_converted_transformers_checkpoint_matches_transformers(tmp_path, variant):
    reference = transformers_mae(**variant)
    reference.save_pretrained(tmp_path / "tf")
    converted = convert_mae_checkpoint(tmp_path / "tf", tmp_path / "ours")
    ours = MAEForPreTraining.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.layer_norm_eps == 1e-12 and ours.config.norm_pix_loss == reference.config.norm_pix_loss
    channels = reference.config.num_channels
    pixels, noise = torch.randn(3, channels, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, noise=noise)
        got = ours(pixel_values=pixels, noise=noise)
        got_in_memory = converted.eval()(pixel_values=pixels, noise=noise)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-5)
    assert torch.equal(got.mask, expected.mask) and torch.equal(got.ids_restore, expected.ids_restore)
    assert torch.equal(got_in_memory.logits, got.logits)

    # The converted encoder, unmasked, gives transformers' last_hidden_state when transformers masks nothing
    # (mask_ratio 0 and ascending noise keep every patch in grid order).
    reference.config.mask_ratio = 0.0
    encoder = AutoModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        ordered = torch.arange(16.0).expand(3, 16)
        expected_hidden = reference.vit(pixel_values=pixels, noise=ordered).last_hidden_state
        got_hidden = encoder(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got_hidden, expected_hidden, rtol=0, atol=1e-5)


def official_state_dict(reference: ViTMAEForPreTraining) -> dict:
    """The facebookresearch/mae layout of a transformers ViTMAE, written out key by key."""
    sd = reference.state_dict()
    out = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["vit.layernorm.weight"],
        "norm.bias": sd["vit.layernorm.bias"],
        "decoder_embed.weight": sd["decoder.decoder_embed.weight"],
        "decoder_embed.bias": sd["decoder.decoder_embed.bias"],
        "mask_token": sd["decoder.mask_token"],
        "decoder_pos_embed": sd["decoder.decoder_pos_embed"],
        "decoder_norm.weight": sd["decoder.decoder_norm.weight"],
        "decoder_norm.bias": sd["decoder.decoder_norm.bias"],
        "decoder_pred.weight": sd["decoder.decoder_pred.weight"],
        "decoder_pred.bias": sd["decoder.decoder_pred.bias"],
    }
    for src, dst, depth in (("vit.layers", "blocks", 2), ("decoder.decoder_layers", "decoder_blocks", 2)):
        for i in range(depth):
            s = f"{src}.{i}."
            for kind in ("weight", "bias"):
                out[f"{dst}.{i}.attn.qkv.{kind}"] = torch.cat([sd[f"{s}attention.{p}_proj.{kind}"] for p in "qkv"])
                out[f"{dst}.{i}.attn.proj.{kind}"] = sd[f"{s}attention.o_proj.{kind}"]
                out[f"{dst}.{i}.norm1.{kind}"] = sd[f"{s}layernorm_before.{kind}"]
                out[f"{dst}.{i}.norm2.{kind}"] = sd[f"{s}layernorm_after.{kind}"]
                out[f"{dst}.{i}.mlp.fc1.{kind}"] = sd[f"{s}mlp.fc1.{kind}"]
                out[f"{dst}.{i}.mlp.fc2.{kind}"] = sd[f"{s}mlp.fc2.{kind}"]
    return out


def test_converted_official_checkpoint_matches(tmp_path):
    reference = transformers_mae()
    checkpoint = {
        "model": official_state_dict(reference),
        "epoch": 799,
        "args": argparse.Namespace(norm_pix_loss=False),
    }
    torch.save(checkpoint, tmp_path / "mae_pretrain.pth")
    # width 32 is no ViT preset: the heads must be given, and the error says so
    with pytest.raises(ConversionError, match="num_attention_heads"):
        convert_mae_checkpoint(tmp_path / "mae_pretrain.pth")
    ours = convert_mae_checkpoint(
        tmp_path / "mae_pretrain.pth",
        tmp_path / "out",
        num_attention_heads=4,
        decoder_num_attention_heads=2,
        norm_pix_loss=False,
        layer_norm_eps=1e-12,
    ).eval()
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, noise=noise)
        got = MAEForPreTraining.from_pretrained(tmp_path / "out").eval()(pixel_values=pixels, noise=noise)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-5)
    assert ours.config.image_size == 32 and ours.config.patch_size == 8 and ours.config.num_hidden_layers == 2


def test_encoder_only_official_checkpoint_warns_and_keeps_the_encoder(tmp_path):
    reference = transformers_mae()
    state = {
        k: v
        for k, v in official_state_dict(reference).items()
        if k.startswith(("cls_token", "pos_embed", "patch_embed", "blocks", "norm"))
    }
    state["head.weight"] = torch.zeros(10, 32)  # a fine-tuned file's classifier: dropped, and said so
    torch.save(state, tmp_path / "encoder.pth")
    with pytest.warns(UserWarning) as record:
        ours = convert_mae_checkpoint(tmp_path / "encoder.pth", num_attention_heads=4, layer_norm_eps=1e-12)
    messages = " ".join(str(w.message) for w in record)
    assert "decoder is freshly initialised" in messages and "head.weight" in messages
    reference.config.mask_ratio = 0.0
    pixels = torch.randn(2, 3, 32, 32)
    encoder = MAEModel(ours.config)
    encoder.vit.load_state_dict(ours.vit.state_dict())
    with torch.no_grad():
        expected = reference.vit(pixel_values=pixels, noise=torch.arange(16.0).expand(2, 16)).last_hidden_state
        got = encoder.eval()(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_conversion_rejects_what_it_cannot_convert(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert_mae_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConversionError, match="vit_mae"):
        convert_mae_checkpoint(tmp_path / "folder")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(ConversionError, match="patch_embed"):
        convert_mae_checkpoint(tmp_path / "other.pth")


class _Exploit:
    """Unpickling this runs a shell command: what a malicious .pth would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_official_loader_refuses_arbitrary_pickles(tmp_path):

    marker = tmp_path / "pwned"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "payload": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="holds more than tensors; refusing to unpickle it"):
        convert_mae_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists(), "the checkpoint's code ran"


def test_conversion_never_overwrites_its_source(tmp_path):
    """Issue 17: `hf-mim convert SRC SRC` used to overwrite its own source."""
    transformers_mae().save_pretrained(tmp_path / "tf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "tf").iterdir()}
    for dst in (tmp_path / "tf", tmp_path / "tf" / "."):
        with pytest.raises(ConversionError, match="would overwrite the source"):
            convert_checkpoint(tmp_path / "tf", dst)
    assert {p.name: p.read_bytes() for p in (tmp_path / "tf").iterdir()} == before
    official = tmp_path / "official"
    official.mkdir()
    save_file({"cls_token": torch.zeros(1, 1, 8)}, official / "model.safetensors")
    with pytest.raises(ConversionError, match="would overwrite the source"):
        convert_checkpoint(official / "model.safetensors", official)
    run = hf_mim_command("convert", [str(tmp_path / "tf"), str(tmp_path / "tf")])
    assert run.returncode == 2 and "would overwrite the source" in run.stderr and "Traceback" not in run.stderr


def test_a_pickle_only_or_corrupt_transformers_folder_is_refused_in_one_line(tmp_path):
    model = transformers_mae()
    model.save_pretrained(tmp_path / "tf")
    (tmp_path / "tf" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "tf" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="has only pickle weights"):
        convert_checkpoint(tmp_path / "tf", tmp_path / "out")
    model.save_pretrained(tmp_path / "bad")
    with open(tmp_path / "bad" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="safetensors weights cannot be read"):
        convert_checkpoint(tmp_path / "bad", tmp_path / "out")


def test_cli_convert_and_help(tmp_path):
    transformers_mae().save_pretrained(tmp_path / "tf")
    run = hf_mim_command("convert", [str(tmp_path / "tf"), str(tmp_path / "out")])
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert type(AutoModel.from_pretrained(tmp_path / "out")) is MAEModel
    bad = hf_mim_command("convert", [str(tmp_path / "nowhere"), str(tmp_path / "x")])
    assert bad.returncode == 2 and "no checkpoint at" in bad.stderr and "Traceback" not in bad.stderr
    helptext = subprocess.run([sys.executable, "-m", "hf_mim", "--help"], capture_output=True, text=True, timeout=300)
    assert helptext.returncode == 0 and "convert" in helptext.stdout


# ----------------------------------------------------------------------------------------------------------
# transformers.Trainer
# ----------------------------------------------------------------------------------------------------------


def test_classification_fine_tunes_with_trainer_from_a_pretrained_checkpoint(tmp_path):
    from transformers import AutoModelForImageClassification, Trainer

    MAEForPreTraining(tiny_config(pooling="mean")).save_pretrained(tmp_path / "pretrained")
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "pretrained", num_labels=3)
    assert isinstance(model, MAEForImageClassification) and model.config.pooling == "mean"
    trainer = Trainer(
        model=model,
        args=trainer_args(tmp_path),
        train_dataset=PixelsOnly(16, labels=True),
        eval_dataset=PixelsOnly(8, labels=True),
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    out = model(pixel_values=torch.randn(2, 3, 32, 32).to(model.device), labels=torch.tensor([0, 2]).to(model.device))
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2]).to(model.device))
    torch.testing.assert_close(out.loss, expected)


def test_fresh_initialisation_follows_mae():
    config = tiny_config(
        hidden_size=768, num_attention_heads=12, decoder_hidden_size=512, decoder_num_attention_heads=16
    )
    torch.manual_seed(0)
    model = MAEForPreTraining(config)
    for token in (model.vit.cls_token, model.decoder.mask_token):
        assert abs(token.std().item() - 0.02) < 0.003, token.std()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            bound = (6 / (module.in_features + module.out_features)) ** 0.5  # Xavier-uniform
            w = module.weight.abs().max().item()
            assert 0.99 * bound < w <= bound, (name, w, bound)
            assert not module.bias.any(), name
        if isinstance(module, torch.nn.LayerNorm):
            assert (module.weight == 1).all() and not module.bias.any(), name
    proj = model.vit.patch_embed.proj.weight  # Xavier over the flattened patch, like a linear layer
    bound = (6 / (proj.shape[0] + proj[0].numel())) ** 0.5
    assert 0.99 * bound < proj.abs().max().item() <= bound


@pytest.mark.parametrize("strategy", ["block", "mask_patch", "central", "rectangles"])
def test_mae_drops_patches_of_any_strategy(strategy):
    config = tiny_config(mask_strategy=strategy, mask_ratio=0.5, mask_min_num_patches=2, mask_patch_size=16)
    model = MAEForPreTraining(config).eval()
    pixels = torch.randn(3, 3, 32, 32)
    expected = config.masking_spec().num_masked(config.grid_size)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert out.mask.sum(1).tolist() == [expected] * 3
    # the same mask passed explicitly gives the same result, and the encoder saw only the visible patches
    with torch.no_grad():
        again = model(pixel_values=pixels, bool_masked_pos=out.mask.bool(), output_hidden_states=True)
    torch.testing.assert_close(again.loss, out.loss)
    assert again.hidden_states[0].shape[1] == 1 + 16 - expected
    with pytest.raises(ValueError, match="noise only defines masks"):
        model(pixel_values=pixels, noise=torch.rand(3, 16))


def test_mae_bool_masked_pos_must_mask_the_same_count_per_image():
    model = MAEForPreTraining(tiny_config())
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :12], mask[1, :11] = True, True
    with pytest.raises(ValueError, match="same count"):
        model(pixel_values=torch.randn(2, 3, 32, 32), bool_masked_pos=mask)
    with pytest.raises(ValueError, match="not both"):
        model(pixel_values=torch.randn(2, 3, 32, 32), bool_masked_pos=mask, noise=torch.rand(2, 16))


# ----------------------------------------------------------------------------------------------------------
# Learned masks (mask_strategy="learned")
# ----------------------------------------------------------------------------------------------------------


def learned_config(**overrides) -> MAEConfig:
    return tiny_config(**{"mask_strategy": "learned", **overrides})


class TestLearnedMAE(TestMAE):
    """Every model check again, with the mask model in the model (save/load, Auto classes, gradients to every
    parameter, one compiled graph, gradient checkpointing, Trainer on pixel values alone)."""

    def get_config(self, **overrides):
        return learned_config(**overrides)

    def pretraining_inputs(self, config, seed=0):
        g = torch.Generator().manual_seed(seed + 1)
        return {
            "pixel_values": self.pixel_values(config, seed),
            "noise": torch.rand(self.batch_size, config.num_patches, generator=g),
            "score_noise": torch.rand(self.batch_size, config.num_patches, generator=g),
        }

    def check_pretraining_outputs(self, config, outputs, inputs):
        b, length = self.batch_size, config.num_patches
        randomly, by_score = learned_mask_counts(length, config.mask_ratio, config.mask_random_ratio)
        assert outputs.mask.sum(dim=1).tolist() == [randomly + by_score] * b
        # the random share: the highest-noise patches are masked whatever the scores
        assert (outputs.mask.gather(1, inputs["noise"].topk(randomly, dim=1).indices) == 1).all()
        assert outputs.loss == outputs.reconstruction_loss + outputs.mask_penalty
        assert 0 <= outputs.mask_entropy <= 1 and 0 <= outputs.mask_foreground_overlap <= 1
        assert outputs.mask_scores.shape == (b, length)


def test_learned_masks_give_exactly_maes_loss_for_that_mask():
    """The straight-through weights are the mask in value: the logits are those of plain MAE given the same mask, bit
    for bit, the loss too (to rounding: it is summed per image first), and the encoder sees only the visible
    patches."""
    torch.manual_seed(0)
    model = MAEForPreTraining(learned_config()).eval()
    pixels, g = torch.randn(3, 3, 32, 32), torch.Generator().manual_seed(1)
    inputs = dict(noise=torch.rand(3, 16, generator=g), score_noise=torch.rand(3, 16, generator=g))
    out = model(pixels, **inputs, output_hidden_states=True)
    plain = model(pixels, bool_masked_pos=out.mask.bool(), output_hidden_states=True)
    assert torch.equal(out.logits, plain.logits)
    torch.testing.assert_close(out.reconstruction_loss, plain.loss, rtol=1e-6, atol=0)
    assert out.hidden_states[0].shape[1] == 1 + 16 - 12
    assert plain.mask_penalty is None  # a given mask bypasses the mask model


def test_the_mask_model_sees_a_downsampled_view_and_never_the_encoder():
    model = MAEForPreTraining(learned_config(mask_model_pixels_per_patch=2))
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = args[0].shape  # returns None: the output stays

        return hook

    model.mask_model.layers[0].register_forward_hook(record("view"))
    model.vit.blocks[0].register_forward_hook(record("tokens"))
    model(torch.randn(2, 3, 32, 32))
    assert seen == {"view": (2, 3, 8, 8), "tokens": (2, 1 + 4, 32)}  # 2 px per patch of a 4 x 4 grid; 4 visible


def test_gradient_reversal_touches_only_the_mask_model():
    """The encoder and decoder get the reconstruction loss's own gradient whatever the reversal scale; the mask
    model gets it scaled by minus that scale (plus the penalty's, off here)."""
    grads = {}
    for scale in (1.0, 2.0):
        torch.manual_seed(0)
        model = MAEForPreTraining(learned_config(gradient_reversal_scale=scale, mask_diversity_weight=0.0))
        g = torch.Generator().manual_seed(1)
        pixels = torch.randn(4, 3, 32, 32, generator=g)
        model(pixels, noise=torch.rand(4, 16, generator=g), score_noise=torch.rand(4, 16, generator=g)).loss.backward()
        grads[scale] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, grad in grads[1.0].items():
        if name.startswith("mask_model."):
            torch.testing.assert_close(grads[2.0][name], 2 * grad)
            assert grad.abs().sum() > 0, name
        else:
            assert torch.equal(grads[2.0][name], grad), name


def test_mask_model_steps_make_the_reconstruction_harder():
    """The adversary's side of the min-max: with the rest of a briefly trained MAE fixed, steps of the mask model
    alone on its gradient (reversed by the forward) raise the reconstruction loss on the same images and noise,
    and its masks move onto the objects (bright squares on black)."""
    torch.manual_seed(0)
    # the penalty off: this is about the adversarial gradient alone (the penalty has its own tests)
    config = tiny_config(
        image_size=16, patch_size=4, mask_strategy="learned", mask_random_ratio=0.0, mask_diversity_weight=0.0
    )
    model = MAEForPreTraining(config)
    g = torch.Generator().manual_seed(0)
    images = torch.full((16, 3, 16, 16), -1.0)
    for image in images:
        top, left = torch.randint(0, 9, (2,), generator=g).tolist()
        image[:, top : top + 8, left : left + 8] = 1.0
    noise, score_noise = torch.rand(16, 16, generator=g), torch.rand(16, 16, generator=g)
    rest = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("mask_model.")], lr=3e-3)
    for _ in range(100):  # the MAE learns with random masks
        random_masks = torch.rand(16, 16, generator=g).argsort(1) < 12
        rest.zero_grad()
        model(images, bool_masked_pos=random_masks).loss.backward()
        rest.step()
    adversary = torch.optim.Adam(model.mask_model.parameters(), lr=1e-2)
    before = model(images, noise=noise, score_noise=score_noise)
    for _ in range(10):
        adversary.zero_grad()
        model(images, noise=noise, score_noise=score_noise).loss.backward()
        adversary.step()
    after = model(images, noise=noise, score_noise=score_noise)
    assert after.reconstruction_loss > 1.2 * before.reconstruction_loss
    assert after.mask_foreground_overlap > after.foreground_fraction > before.mask_foreground_overlap


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(mask_model_pixels_per_patch=3), "mask_model_pixels_per_patch"),
        (dict(mask_model_pixels_per_patch=16), "mask_model_pixels_per_patch"),  # more than the 8 px patches
        (dict(mask_model_channels=0), "mask_model_channels"),
        (dict(mask_random_ratio=1.0), "mask_random_ratio"),
        (dict(mask_random_ratio=0.97), "mask_random_ratio"),  # round(12 * 0.97) = 12: no patch left to the scores
        (dict(mask_temperature=0.0), "mask_temperature"),
        (dict(mask_diversity_weight=-1.0), "mask_diversity_weight"),
        (dict(mask_model_learning_rate=float("nan")), "mask_model_learning_rate"),
        (dict(gradient_reversal_scale=-1.0), "gradient_reversal_scale"),
        (dict(mask_strategy="learnt"), "mask_strategy"),
    ],
)
def test_learned_mask_fields_are_checked_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        learned_config(**overrides)


def test_only_mae_has_learned_masks():
    from hf_mim import RMAEConfig, SimMIMConfig

    with pytest.raises(ValueError, match="^mask_strategy='learned' is invalid"):
        RMAEConfig(**TINY, mask_strategy="learned")
    with pytest.raises(ValueError, match="^mask_strategy='learned' is invalid"):
        SimMIMConfig(**TINY_VIT, mask_strategy="learned")
    assert MAEForPreTraining(tiny_config()).mask_model is None


def test_the_method_spec_gives_learned_masks_their_adversary_and_picture():
    from hf_mim.model_cards import card_pictures
    from hf_mim.modeling.mae import METHOD

    assert METHOD.adversary_for(tiny_config()) is None
    assert METHOD.adversary_for(learned_config()) is METHOD.adversary and not METHOD.adversary.replays
    assert [p.file for p in METHOD.pictures(tiny_config())] == ["reconstruction.png"]
    assert [p.file for p in METHOD.pictures(learned_config())] == ["reconstruction.png", "learned_masks.png"]
    assert "learned_masks.png" in [name for name, _, _ in card_pictures(learned_config())]
    model = MAEForPreTraining(learned_config())
    assert {id(p) for p in METHOD.adversary.parameters(model)} == {id(p) for p in model.mask_model.parameters()}


def test_sample_inputs_of_learned_masks_are_seeded():
    from hf_mim.modeling.mae import sample_mae_inputs

    config = learned_config()
    a, b = (sample_mae_inputs(config, (4, 4), torch.Generator().manual_seed(3)) for _ in range(2))
    assert set(a) == {"noise", "score_noise"} and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["noise"], a["score_noise"])


def test_visualize_draws_learned_masks_next_to_random_ones(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    MAEForPreTraining(learned_config()).save_pretrained(tmp_path / "model")
    out = tmp_path / "pictures"
    run = hf_mim_command(
        "visualize", ["--model", str(tmp_path / "model"), "--num-images", "3", "--scale", "1", "--output-dir", str(out)]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"wrote {out / 'reconstruction.png'}" in run.stdout and f"wrote {out / 'learned_masks.png'}" in run.stdout
    picture = torch.from_numpy(np.array(Image.open(out / "learned_masks.png"))).float()
    assert picture.shape == (3 * 32, 4 * 32, 3)  # image, scores, learned mask, random mask
    # of the 16 patches of every image, the learned mask greys the 9 the scores chose and darkens the 3 random ones;
    # the random mask greys 12
    patches = picture.view(3, 4, 8, 4, 32, 3).unflatten(4, (4, 8))  # (image, row, y, column, patch column, x, rgb)
    shades = {}
    for column in (2, 3):
        cells = patches[:, :, :, column].permute(0, 1, 3, 2, 4, 5)  # (image, row, patch column, y, x, rgb)
        shades[column] = [(cells == value).all(dim=(3, 4, 5)).sum(dim=(1, 2)).tolist() for value in (128, 64)]
    assert shades[2] == [[9, 9, 9], [3, 3, 3]] and shades[3] == [[12, 12, 12], [0, 0, 0]]


def test_learned_masks_load_as_remote_code_without_hf_mim(tmp_path):
    """A learned-mask MAE saved by hf_mim loads with `trust_remote_code=True` where hf_mim cannot be imported, and
    gives the same masks and loss for the same inputs."""
    from safetensors.torch import save_file as save_tensors

    torch.manual_seed(0)
    model = MAEForPreTraining(learned_config()).eval()
    model.save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(1)
    inputs = {
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
        "noise": torch.rand(2, 16, generator=g),
        "score_noise": torch.rand(2, 16, generator=g),
    }
    save_tensors(inputs, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        expected = model(**inputs)
    script = f"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_mim" or name.startswith("hf_mim."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import torch
from safetensors.torch import load_file
from transformers import AutoModelForPreTraining
model = AutoModelForPreTraining.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
with torch.no_grad():
    out = model(**load_file({str(tmp_path / "inputs.safetensors")!r}))
print("RESULT " + json.dumps({{"module": type(model).__module__, "loss": out.loss.item(), "mask": out.mask.tolist()}}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["module"].startswith("transformers_modules.")
    assert result["mask"] == expected.mask.tolist() and result["loss"] == pytest.approx(expected.loss.item(), abs=1e-6)
