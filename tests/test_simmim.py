import subprocess
import sys

import pytest
import torch
from transformers import ViTConfig, ViTForMaskedImageModeling, ViTModel

from hf_mim import SimMIMConfig, SimMIMForImageClassification, SimMIMForPreTraining, SimMIMModel
from hf_mim.convert import convert_checkpoint
from hf_mim.modeling.simmim import METHOD

from .model_tester import ModelTesterMixin

# squares of 2x2 patches, so that the mask_patch strategy's own geometry is tested (8 px squares are patches)
TINY = {**METHOD.tiny_config, "mask_patch_size": 16}


def tiny_config(**overrides) -> SimMIMConfig:
    return SimMIMConfig(**{**TINY, **overrides})


class TestSimMIM(ModelTesterMixin):
    config_class = SimMIMConfig
    encoder_class = SimMIMModel
    pretraining_class = SimMIMForPreTraining
    classification_class = SimMIMForImageClassification

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def pretraining_inputs(self, config, seed=0):
        return self.masked_inputs(config, seed)

    def check_pretraining_outputs(self, config, outputs, inputs):
        height, width = inputs["pixel_values"].shape[-2:]
        assert outputs.reconstruction.shape == (self.batch_size, config.num_channels, height, width)
        assert torch.equal(outputs.bool_masked_pos, inputs["bool_masked_pos"])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(encoder_stride=16), "encoder_stride"),  # transformers #23832: a shape error there, a config error here
        (dict(mask_patch_size=12), "mask_patch_size"),  # not a multiple of the patch size
        (dict(mask_patch_size=24), "mask_patch_size"),  # does not tile 32 px
        # one mask square for the whole image: nothing stays visible; the squares are what must change (issue 17)
        (dict(mask_patch_size=32), "mask_patch_size"),
        (dict(mask_strategy="grid"), "mask_strategy"),
        (dict(mask_ratio=1.0), "mask_ratio"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    ("image_size", "patch_size", "squares"), [(224, 16, 32), (192, 16, 32), (32, 4, 8), (16, 4, 4)]
)
def test_default_mask_squares_fit_the_image(image_size, patch_size, squares):
    """Issue 17: SimMIMConfig(image_size=32, patch_size=4) kept 32 px squares, one for the whole image, and failed."""
    config = SimMIMConfig(image_size=image_size, patch_size=patch_size)
    assert config.mask_patch_size == squares
    assert 0 < config.masking_spec().num_masked(config.grid_size) < config.num_patches


@pytest.mark.parametrize(
    ("image_size", "patch_size", "squares"), [(32, 4, 8), (28, 4, 4), (36, 4, 4), (40, 5, 10), (64, 8, 16)]
)
def test_the_small_recipe_masks_2x2_patch_squares_where_they_tile_the_grid(image_size, patch_size, squares):
    """Issue 28: the small recipe's fixed 8 px squares do not tile the 7x7 patch grid of a 28 px image (Fashion-MNIST)
    and `hf-mim pretrain --method simmim` stopped there. Its squares are 2x2 patches where they tile the grid, else
    single patches; the card's masking row says which."""
    from hf_mim.modeling.spec import masking_rows

    fields = METHOD.small.config_for(image_size, patch_size)
    assert fields["mask_patch_size"] == squares
    config = SimMIMConfig(image_size=image_size, patch_size=patch_size, **fields)
    assert 0 < config.masking_spec().num_masked(config.grid_size) < config.num_patches
    assert masking_rows(config) == (("Masking", f"mask_patch, ratio 0.6, {squares} px squares"),)


def test_defaults_are_the_papers():
    config = SimMIMConfig()
    assert (config.mask_strategy, config.mask_ratio, config.mask_patch_size) == ("mask_patch", 0.6, 32)
    assert config.encoder_stride == config.patch_size == 16


def test_drawn_masks_have_the_configured_count_and_follow_the_seed():
    config = tiny_config()
    model = SimMIMForPreTraining(config).eval()
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(pixel_values=pixels)
        torch.manual_seed(0)
        b = model(pixel_values=pixels)
    assert a.bool_masked_pos.dtype == torch.bool
    assert a.bool_masked_pos.sum(1).tolist() == [12] * 4  # ceil(4 squares * 0.6) = 3 squares of 2x2 patches
    assert torch.equal(a.bool_masked_pos, b.bool_masked_pos) and torch.equal(a.loss, b.loss)


def test_masked_patches_reach_the_encoder_as_mask_tokens_only():
    """What lies under a masked patch cannot influence any output (unilm #358: masks that do not change the input)."""
    config = tiny_config()
    model = SimMIMForPreTraining(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [0, 1, 4, 5]] = True  # the top-left 16x16 pixels
    altered = pixels.clone()
    altered[:, :, :16, :16] = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(pixel_values=pixels, bool_masked_pos=mask)
        b = model(pixel_values=altered, bool_masked_pos=mask)
        c = model(pixel_values=altered, bool_masked_pos=torch.zeros_like(mask) | mask.roll(2, 1))
    assert torch.equal(a.reconstruction, b.reconstruction)
    assert not torch.allclose(b.reconstruction, c.reconstruction)


def test_loss_is_l1_on_masked_pixels_only():
    config = tiny_config()
    model = SimMIMForPreTraining(config).eval()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = True  # sample 0: the patch at row 0, column 3
    mask[1, 12] = True  # sample 1: row 3, column 0
    with torch.no_grad():
        out = model(pixel_values=pixels, bool_masked_pos=mask)
    error = (out.reconstruction - pixels).abs()
    expected = (error[0, :, 0:8, 24:32].sum() + error[1, :, 24:32, 0:8].sum()) / (2 * 64 + 1e-5) / 3
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# Conversion and parity with transformers' ViTForMaskedImageModeling
# ----------------------------------------------------------------------------------------------------------------


def transformers_simmim(num_channels=3, qkv_bias=True) -> ViTForMaskedImageModeling:
    torch.manual_seed(0)
    config = ViTConfig(
        **{k: v for k, v in TINY.items() if k != "mask_patch_size"},
        num_channels=num_channels,
        qkv_bias=qkv_bias,
        encoder_stride=8,
    )
    model = ViTForMaskedImageModeling(config).eval()
    with torch.no_grad():  # no zero anywhere for a mapping slip to hide behind
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.mark.parametrize("variant", [dict(), dict(num_channels=1), dict(qkv_bias=False)], ids=str)
def test_converted_transformers_checkpoint_matches_transformers(tmp_path, variant):
    reference = transformers_simmim(**variant)
    reference.save_pretrained(tmp_path / "tf")
    converted = convert_checkpoint(tmp_path / "tf", tmp_path / "ours", mask_patch_size=16)
    assert isinstance(converted, SimMIMForPreTraining)
    ours = SimMIMForPreTraining.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.position_embedding_type == "learned" and ours.config.layer_norm_eps == 1e-12
    channels = reference.config.num_channels
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, channels, 32, 32, generator=g)
    mask = ours.config.masking_spec().sample_batch(3, (4, 4), generator=g)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, bool_masked_pos=mask)
        got = ours(pixel_values=pixels, bool_masked_pos=mask)
        unmasked_expected = reference.vit(pixel_values=pixels).last_hidden_state
        unmasked_got = SimMIMModel.from_pretrained(tmp_path / "ours").eval()(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.reconstruction, expected.reconstruction, rtol=0, atol=1e-5)
    torch.testing.assert_close(unmasked_got, unmasked_expected, rtol=0, atol=1e-5)
    # a different mask gives a different loss in both, by the same amount
    with torch.no_grad():
        other = ~mask | mask  # everything masked is not allowed by configs, but the forward accepts any mask
        other[:, 5:] = False
        torch.testing.assert_close(
            ours(pixel_values=pixels, bool_masked_pos=other).loss,
            reference(pixel_values=pixels, bool_masked_pos=other).loss,
            rtol=0,
            atol=1e-5,
        )


def test_plain_vit_converts_with_a_fresh_head_and_a_warning(tmp_path):
    reference = transformers_simmim()
    ViTModel(reference.config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    with pytest.warns(UserWarning, match="mask token and head start freshly initialised"):
        model = convert_checkpoint(tmp_path / "vit")
    assert isinstance(model, SimMIMForPreTraining)
    assert model.config.mask_patch_size == 8  # 32 px mask squares do not fit a 32 px image: plain patches


def test_cli_converts_a_transformers_vit_folder(tmp_path):
    transformers_simmim().save_pretrained(tmp_path / "tf")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_mim",
            "convert",
            str(tmp_path / "tf"),
            str(tmp_path / "out"),
            "--mask-patch-size",
            "16",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = SimMIMConfig.from_pretrained(tmp_path / "out")
    assert config.model_type == "hf_mim_simmim" and config.mask_patch_size == 16


def test_simmim_conversion_refuses_other_folders(tmp_path):
    from hf_mim.convert import ConversionError, convert_simmim_checkpoint

    (tmp_path / "mae").mkdir()
    (tmp_path / "mae" / "config.json").write_text('{"model_type": "vit_mae"}')
    with pytest.raises(ConversionError, match="model_type='vit_mae'; expected a 'vit' folder"):
        convert_simmim_checkpoint(tmp_path / "mae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="without config.json"):
        convert_simmim_checkpoint(tmp_path / "empty")


def test_loads_as_transformers_masked_image_modeling_model(tmp_path):
    """AutoModelForMaskedImageModeling, transformers' class for ViTForMaskedImageModeling (SimMIM), gives the SimMIM
    pretraining model with its weights, as AutoModelForPreTraining does."""
    from transformers import AutoModelForMaskedImageModeling

    model = SimMIMForPreTraining(SimMIMConfig(**METHOD.tiny_config)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedImageModeling.from_pretrained(tmp_path).eval()
    assert type(loaded) is SimMIMForPreTraining
    pixels, mask = torch.randn(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels, bool_masked_pos=mask).loss, model(pixels, bool_masked_pos=mask).loss)
