import logging
import shutil

import pytest
import torch

from hf_mim import (
    BEiTConfig,
    BEiTForImageClassification,
    BEiTForPreTraining,
    BEiTModel,
    VisualTokenizer,
    VisualTokenizerConfig,
)
from hf_mim.modeling.beit import METHOD
from hf_mim.modeling.tokenizer import METHOD as TOKENIZER_METHOD

from .model_tester import ModelTesterMixin, compiled_graphs

TOKENIZER = TOKENIZER_METHOD.tiny_config
TINY = METHOD.tiny_config


def tiny_tokenizer(**overrides) -> VisualTokenizer:
    torch.manual_seed(0)
    return VisualTokenizer(VisualTokenizerConfig(**{**TOKENIZER, **overrides}))


def tiny_config(**overrides) -> BEiTConfig:
    fields = {**TINY, "tokenizer_config": VisualTokenizerConfig(**TOKENIZER).to_fields(), **overrides}
    return BEiTConfig(**fields)


class TestBEiT(ModelTesterMixin):
    config_class = BEiTConfig
    encoder_class = BEiTModel
    pretraining_class = BEiTForPreTraining
    classification_class = BEiTForImageClassification

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def pretraining_inputs(self, config, seed=0):
        return self.masked_inputs(config, seed)

    def check_pretraining_outputs(self, config, outputs, inputs):
        b, length = self.batch_size, config.num_patches
        assert outputs.logits.shape == (b, length, config.vocab_size)
        assert outputs.labels.shape == (b, length) and outputs.labels.dtype == torch.long
        assert torch.equal(outputs.bool_masked_pos, inputs["bool_masked_pos"])
        assert 0.0 <= outputs.accuracy.item() <= 1.0


def test_defaults_are_the_papers():
    config = BEiTConfig(tokenizer_config=VisualTokenizerConfig().to_fields())
    spec = config.masking_spec()
    assert (spec.strategy, spec.mask_ratio, spec.min_num_patches, spec.min_aspect) == ("block", 0.4, 16, 0.3)
    assert config.vocab_size == 8192 and config.layer_scale_init_value == 0.1
    assert config.masking_spec().num_masked(config.grid_size) == 79  # BEiT: 75 of 196


def test_blocks_larger_than_what_is_masked_are_refused_at_config_time():
    """Issue 17: BEiT's 16-patch minimum block on a 4x4 grid (40% masks 7 patches) degenerated silently into random
    single patches. An explicit minimum that cannot fit is refused; the default shrinks to what is masked."""
    with pytest.raises(ValueError, match=r"^mask_min_num_patches=16 is invalid: at most the 7 patches"):
        BEiTConfig(image_size=32, patch_size=8, mask_min_num_patches=16)
    small = BEiTConfig(image_size=32, patch_size=8)
    assert small.mask_min_num_patches is None and small.masking_spec().min_num_patches == 7
    for seed in range(8):  # blocks of 6-7 patches (and a top-up), not 7 scattered patches: a small bounding box
        mask = small.masking_spec().sample(small.grid_size, torch.Generator().manual_seed(seed)).view(4, 4)
        assert int(mask.sum()) == 7 and int(mask.any(1).sum()) * int(mask.any(0).sum()) <= 9, mask
    assert BEiTConfig(image_size=32, patch_size=8, mask_min_num_patches=4).masking_spec().min_num_patches == 4


def test_loss_is_cross_entropy_on_masked_positions_only():
    model = BEiTForPreTraining(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 2]], mask[1, [7]] = True, True
    labels = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(pixel_values=pixels, bool_masked_pos=mask, labels=labels)
    log_probs = out.logits.log_softmax(-1)
    expected = -(log_probs[0, 1, labels[0, 1]] + log_probs[0, 2, labels[0, 2]] + log_probs[1, 7, labels[1, 7]]) / 3
    torch.testing.assert_close(out.loss, expected)
    changed = labels.clone()
    changed[~mask] = (changed[~mask] + 1) % 16  # labels of visible patches do not matter
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels, bool_masked_pos=mask, labels=changed).loss, out.loss)


def test_given_labels_compile_into_one_graph_and_bad_ids_still_fail():
    model = BEiTForPreTraining(tiny_config()).train()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [1, 2, 5]] = True
    labels = torch.randint(0, 16, (2, 16), generator=torch.Generator().manual_seed(0))
    graphs, reasons = compiled_graphs(
        lambda **kw: model(**kw).loss, pixel_values=pixels, bool_masked_pos=mask, labels=labels
    )
    assert (graphs, reasons) == (1, [])
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(
        compiled(pixel_values=pixels, bool_masked_pos=mask, labels=labels).loss,
        model(pixel_values=pixels, bool_masked_pos=mask, labels=labels).loss,
    )
    bad = labels.clone()
    bad[0, 0] = 16  # an unmasked position: the loss alone would never notice
    with pytest.raises(RuntimeError, match="outside"):
        compiled(pixel_values=pixels, bool_masked_pos=mask, labels=bad)


def test_targets_come_from_the_frozen_tokenizer():
    model = BEiTForPreTraining(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=pixels)
    assert torch.equal(out.labels, model.tokenizer.get_codebook_indices(pixels))
    model.train()
    assert not model.tokenizer.training and not any(p.requires_grad for p in model.tokenizer.parameters())


def test_masked_patches_reach_the_encoder_as_mask_tokens_only():
    """transformers #13235 / unilm #358: the mask must really change the input."""
    model = BEiTForPreTraining(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [0, 1, 4, 5]] = True
    labels = torch.zeros(2, 16, dtype=torch.long)
    altered = pixels.clone()
    altered[:, :, :16, :16] = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(pixel_values=pixels, bool_masked_pos=mask, labels=labels)
        b = model(pixel_values=altered, bool_masked_pos=mask, labels=labels)
        c = model(pixel_values=altered, bool_masked_pos=torch.zeros_like(mask), labels=labels)
    assert torch.equal(a.logits, b.logits)
    assert not torch.allclose(b.logits, c.logits)


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.full((2, 16), 16), r"outside the vocabulary \[0, 15\]"),
        (torch.full((2, 16), -1), "outside the vocabulary"),
        (torch.zeros(2, 9, dtype=torch.long), "must match the patch grid"),
        (torch.zeros(7, dtype=torch.long), "the token id of every patch"),
        (torch.zeros(2, 16), "integer token ids"),
    ],
)
def test_bad_labels_raise(labels, match):
    model = BEiTForPreTraining(tiny_config())
    with pytest.raises(ValueError, match=match):
        model(pixel_values=torch.randn(2, 3, 32, 32), labels=labels)


def test_a_tokenizer_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="^vocab_size="):
        BEiTForPreTraining(tiny_config(tokenizer_config=None), tokenizer=tiny_tokenizer(vocab_size=32))
    with pytest.raises(ValueError, match="^tokenizer_config=.*patch grid"):
        BEiTForPreTraining(tiny_config(tokenizer_config=None), tokenizer=tiny_tokenizer(patch_size=4))
    with pytest.raises(ValueError, match="^tokenizer_config="):
        tiny_config(tokenizer_config={**VisualTokenizerConfig(**TOKENIZER).to_fields(), "patch_size": 16})


def test_without_a_tokenizer_a_random_one_is_built_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_mim.modeling.beit"):
        model = BEiTForPreTraining(tiny_config(tokenizer_config=None))
    assert "smoke tests only" in caplog.text
    assert model.config.tokenizer_config["vocab_size"] == 16
    assert model(pixel_values=torch.randn(2, 3, 32, 32)).loss.isfinite()


def test_trained_tokenizer_travels_inside_the_checkpoint(tmp_path):
    tokenizer = tiny_tokenizer().train()
    tokenizer(pixel_values=torch.randn(4, 3, 32, 32))  # initialise its codebook, so it differs from a fresh one
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    config = tiny_config(tokenizer_config=None, tokenizer_name_or_path=str(tmp_path / "tokenizer"))
    model = BEiTForPreTraining(config)
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(model.tokenizer.state_dict()[key], value), key
    model.save_pretrained(tmp_path / "beit")
    shutil.rmtree(tmp_path / "tokenizer")  # from_pretrained must not need it any more
    reloaded = BEiTForPreTraining.from_pretrained(tmp_path / "beit").eval()
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(reloaded.tokenizer.state_dict()[key], value), key
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(reloaded.visual_tokens(pixels), tokenizer.get_codebook_indices(pixels))
    # passing the object does the same
    passed = BEiTForPreTraining(tiny_config(tokenizer_config=None), tokenizer=tokenizer)
    assert torch.equal(passed.visual_tokens(pixels), tokenizer.get_codebook_indices(pixels))


def test_images_are_renormalised_for_a_tokenizer_with_other_statistics():
    tokenizer = tiny_tokenizer(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    model = BEiTForPreTraining(tiny_config(tokenizer_config=None), tokenizer=tokenizer)
    raw = torch.rand(2, 3, 32, 32)
    mean, std = (
        torch.tensor(model.config.image_mean).view(1, 3, 1, 1),
        torch.tensor(model.config.image_std).view(1, 3, 1, 1),
    )
    torch.testing.assert_close(model.tokenizer_inputs((raw - mean) / std), (raw - 0.5) / 0.5)
