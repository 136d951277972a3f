import math

import pytest
import torch
from PIL import Image

from hf_mim import ADIOSConfig, ADIOSForImageClassification, ADIOSForPreTraining, ADIOSModel, EMATeacherCallback
from hf_mim.model_cards.pictures import PALETTE, mask_grid, save_masks_picture
from hf_mim.modeling.adios import METHOD
from hf_mim.modeling.augment import sample_color_jitter
from hf_mim.modeling.losses import nt_xent, sparsity_penalty

from .model_tester import ModelTesterMixin, PixelsOnly, trainer_args

TINY = METHOD.tiny_config


def tiny_config(**overrides) -> ADIOSConfig:
    return ADIOSConfig(**{**TINY, **overrides})


def jitter(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.stack([sample_color_jitter(g) for _ in range(2)]) for _ in range(batch)])


class TestADIOS(ModelTesterMixin):
    config_class = ADIOSConfig
    encoder_class = ADIOSModel
    pretraining_class = ADIOSForPreTraining
    classification_class = ADIOSForImageClassification

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def pretraining_inputs(self, config, seed=0):
        return {"pixel_values": self.pixel_values(config, seed), "color_jitter": jitter(self.batch_size, seed)}

    def check_pretraining_outputs(self, config, outputs, inputs):
        assert outputs.masks.shape == (self.batch_size, config.num_masks, 32, 32)
        assert torch.equal(outputs.color_jitter, inputs["color_jitter"])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(objective="moco"), "objective"),
        (dict(num_masks=1), "num_masks"),
        (dict(occlusion_norm="batch"), "occlusion_norm"),
        (dict(occlusion_base_channels=12), "occlusion_base_channels"),
        (dict(occlusion_num_blocks=5), "occlusion_num_blocks"),  # 32 px allows at most 4
        (dict(sparsity_eps=0.0), "sparsity_eps"),
        (dict(sparsity_weight=-1.0), "sparsity_weight"),
        (dict(contrastive_temperature=0.0), "contrastive_temperature"),
        (dict(ema_momentum=1.5), "ema_momentum"),
        (dict(color_jitter_strength=[0.4, 0.4]), "color_jitter_strength"),
    ],
)
def test_bad_config_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        tiny_config(**overrides)


def test_unet_depth_and_widths_follow_the_reference():
    """log2(size) - 1 blocks: 4 at 32 px (widths c, 2c, 2c, 2c down; 2c, 2c, c, c up), 6 at 224 px."""
    unet = ADIOSForPreTraining(tiny_config(occlusion_base_channels=32)).occlusion
    assert [b[0].out_channels for b in unet.down] == [32, 64, 64, 64]
    assert [b[0].in_channels for b in unet.up] == [128, 128, 128, 64]
    assert [b[0].out_channels for b in unet.up] == [64, 64, 32, 32]
    assert unet.bottleneck_shape == (64, 4, 4)
    assert ADIOSConfig(image_size=224).unet_num_blocks == 6
    assert ADIOSConfig(image_size=(96, 128)).unet_num_blocks == 5  # the smaller side decides


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masks_partition_every_pixel(dtype):
    model = ADIOSForPreTraining(tiny_config(num_masks=6)).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16), torch.no_grad():
        masks = model.occlusion(pixels)
    assert masks.shape == (3, 6, 32, 32) and masks.dtype == torch.float32
    assert (masks >= 0).all()
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(3, 32, 32), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="configured size"):
        model.occlusion(torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sparsity_penalty_is_finite_for_empty_and_full_masks(dtype):
    """Under autocast, and for half-precision masks, the penalty is computed in float32: 1 / eps for an empty mask
    and for a full one (float32's sin(pi) is slightly negative; unclamped, a full mask would be rewarded)."""
    masks = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])[None].requires_grad_(True)  # (1, 2, 8, 8), float32
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not torch.float32):
        penalty = sparsity_penalty(masks, eps=1e-10)
    assert penalty.dtype == torch.float32 and penalty.item() == pytest.approx(2e10, rel=1e-6)
    penalty.backward()
    assert torch.isfinite(masks.grad).all()
    half = sparsity_penalty(masks.detach().to(dtype), eps=1e-10)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(2e10, rel=1e-6)


def test_sparsity_penalty_hand_computed():
    # two images, two masks with areas (1/2, 1/2) and (1/4, 3/4): sum over masks of the batch mean of 1/sin(pi a)
    masks = torch.zeros(2, 2, 4, 4)
    masks[0, 0, :2], masks[0, 1, 2:] = 1, 1
    masks[1, 0, :1], masks[1, 1, 1:] = 1, 1
    s = 1 / math.sin(math.pi / 4)
    expected = (1 + s) / 2 + (1 + s) / 2
    assert sparsity_penalty(masks, eps=0.0).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_hand_computed():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=-1).tolist()

    def cos(i, j):
        return sum(a * b for a, b in zip(z[i], z[j], strict=True))

    positives = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for i in range(4):
        denominator = sum(math.exp(cos(i, j) / t) for j in range(4) if j != i)
        total += -math.log(math.exp(cos(i, positives[i]) / t) / denominator)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / 4, rel=1e-6)


@pytest.mark.parametrize("objective", ["simclr", "byol", "simsiam"])
def test_one_occlusion_step_makes_the_encoders_task_harder(objective):
    """The occlusion model's side of the min-max: one gradient step on phase="occlusion" raises the encoder's loss on
    the same batch."""
    torch.manual_seed(0)
    model = ADIOSForPreTraining(tiny_config(objective=objective, sparsity_weight=0.0)).train()
    inputs = {"pixel_values": torch.randn(8, 3, 32, 32), "color_jitter": jitter(8)}
    with torch.no_grad():
        before = model(**inputs, phase="encoder").loss
    optimizer = torch.optim.SGD(model.occlusion_parameters(), lr=1.0)
    model(**inputs, phase="occlusion").loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = model(**inputs, phase="encoder").loss
    assert after > before


def test_gradient_reversal_gives_each_side_its_alternating_gradient():
    """phase=None (one optimizer) gives the occlusion model the gradient of phase="occlusion" and the encoder side
    the gradient of phase="encoder"."""
    torch.manual_seed(0)
    model = ADIOSForPreTraining(tiny_config()).train()
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32), "color_jitter": jitter(4)}
    grads = {}
    for phase in (None, "encoder", "occlusion"):
        model.zero_grad()
        model(**inputs, phase=phase).loss.backward()
        grads[phase] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, grad in grads[None].items():
        reference = grads["occlusion" if name.startswith("occlusion.") else "encoder"][name]
        torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-7, msg=name)
    # the encoder phase keeps the occlusion model in the graph (for DDP) with exactly zero gradient
    assert all(not g.any() for n, g in grads["encoder"].items() if n.startswith("occlusion."))


def test_single_mask_uses_each_images_chosen_mask():
    torch.manual_seed(0)
    model = ADIOSForPreTraining(tiny_config(single_mask=True)).eval()
    pixels, factors = torch.randn(4, 3, 32, 32), jitter(4)
    choice = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        out = model(pixels, color_jitter=factors, mask_choice=choice)
        view_a, view_b = model.make_views(pixels, factors)
        masks = model.occlusion(view_b)
        masked = view_b * (1 - masks[torch.arange(4), choice].unsqueeze(1))
        z_a, *_ = model._embed(view_a, False)
        z_m, *_ = model._embed(masked, False)
    expected = nt_xent(z_a, z_m, model.config.contrastive_temperature)
    torch.testing.assert_close(out.similarity_loss, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="mask_choice"):
        model(pixels, color_jitter=factors, mask_choice=choice[:2])


def test_phase_is_checked():
    model = ADIOSForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="phase='both' is invalid"):
        model(torch.randn(2, 3, 32, 32), phase="both")


def test_encoder_loads_without_the_occlusion_model(tmp_path):
    from transformers import AutoModel

    ADIOSForPreTraining(tiny_config()).save_pretrained(tmp_path)
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is ADIOSModel
    assert not any("occlusion" in k or "projector" in k for k in encoder.state_dict())


def test_byol_teacher_moves_and_is_not_a_submodule():
    torch.manual_seed(0)
    model = ADIOSForPreTraining(tiny_config(objective="byol", ema_momentum=0.5, ema_momentum_schedule="constant"))
    inputs = {"pixel_values": torch.randn(4, 3, 32, 32), "color_jitter": jitter(4)}
    model(**inputs, phase="encoder").loss.backward()
    before = {k: v.clone() for k, v in model.teacher.module.state_dict().items()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.update_teacher()
    after = model.teacher.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not any(k.startswith("_teacher") for k in model.state_dict())
    assert not hasattr(ADIOSForPreTraining(tiny_config()), "teacher")  # so EMATeacherCallback leaves SimCLR alone


def test_trainer_trains_byol_adios_with_the_teacher_callback(tmp_path):
    from transformers import Trainer

    torch.manual_seed(0)
    model = ADIOSForPreTraining(tiny_config(objective="byol"))
    trainer = Trainer(
        model=model,
        args=trainer_args(tmp_path),
        train_dataset=PixelsOnly(12),
        callbacks=[EMATeacherCallback()],
    )
    trainer.train()
    assert model.teacher.num_updates == 4
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_mask_grid_png(tmp_path):
    config = tiny_config()
    model = ADIOSForPreTraining(config)
    pixels = torch.randn(2, 3, 32, 32)
    path = save_masks_picture(model, pixels, tmp_path / "masks.png", scale=2)
    picture = Image.open(path)
    assert picture.format == "PNG" and picture.size == (32 * (2 + config.num_masks) * 2, 32 * 2 * 2)

    # a hand-made partition: the left half is mask 0, the right half mask 1
    masks = torch.zeros(1, 2, 4, 4)
    masks[0, 0, :, :2], masks[0, 1, :, 2:] = 1, 1
    grey = torch.zeros(1, 3, 4, 4)  # normalised 0 with mean 0.5, std 0.5 -> value 0.5 -> 128
    grid = mask_grid(grey, masks, [0.5] * 3, [0.5] * 3)
    assert grid.size == (4 * 4, 4)
    assert grid.getpixel((0, 0)) == (128, 128, 128)  # the image
    assert grid.getpixel((4, 0)) == tuple(round(0.5 * 128 + 0.5 * c) for c in PALETTE[0])  # partition, left half
    assert grid.getpixel((7, 0)) == tuple(round(0.5 * 128 + 0.5 * c) for c in PALETTE[1])  # partition, right half
    assert grid.getpixel((8, 0)) == PALETTE[0] and grid.getpixel((11, 0)) == (128, 128, 128)  # mask 0 panel
    with pytest.raises(ValueError, match="differ in size"):
        mask_grid(grey, torch.zeros(1, 2, 8, 8), [0.5] * 3, [0.5] * 3)
