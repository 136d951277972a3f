"""MaskFeat: HOG on hand-computed images, the masked loss, the shared model checks, and the method end to end
(`hf-mim pretrain` with its picture, `Trainer`)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import Trainer

from hf_mim import (
    MaskFeatConfig,
    MaskFeatForImageClassification,
    MaskFeatForPreTraining,
    MaskFeatModel,
)
from hf_mim.modeling.auto import METHOD_SPECS
from hf_mim.modeling.maskfeat import HOG

from .launch import hf_mim_command, two_processes
from .model_tester import ModelTesterMixin, PixelsOnly, trainer_args

SPEC = METHOD_SPECS["maskfeat"]


def tiny_config(**overrides) -> MaskFeatConfig:
    return MaskFeatConfig(**{**SPEC.tiny_config, **overrides})


class TestMaskFeatModel(ModelTesterMixin):
    config_class = MaskFeatConfig
    encoder_class = MaskFeatModel
    pretraining_class = MaskFeatForPreTraining
    classification_class = MaskFeatForImageClassification

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def pretraining_inputs(self, config, seed=0):
        return self.masked_inputs(config, seed)

    def check_pretraining_outputs(self, config, outputs, inputs):
        shape = (self.batch_size, config.num_patches, config.hog_size)
        assert outputs.logits.shape == shape and outputs.hog.shape == shape
        assert torch.equal(outputs.bool_masked_pos, inputs["bool_masked_pos"])


def _step_edge(vertical: bool, size: int = 8) -> torch.Tensor:
    """One channel: 0 on the first half, 1 on the second, split by a vertical (or horizontal) line."""
    image = torch.zeros(1, 1, size, size)
    if vertical:
        image[..., size // 2 :] = 1
    else:
        image[..., size // 2 :, :] = 1
    return image


def test_hog_puts_a_vertical_edge_in_one_bin_and_a_horizontal_edge_in_another():
    hog = HOG(nbins=9, cell_size=4, window=None)
    # A vertical edge: gx = -4 beside it (Sobel weights 1 + 2 + 1), gy = 0: atan2(-4, 0) = -pi/2, times 9 / pi is
    # -4.5, floored -5, which is bin 4 modulo 9. Every cell touches the edge (it runs between columns 3 and 4).
    vertical = hog(_step_edge(True))
    assert vertical.shape == (1, 1, 9, 2, 2)
    expected = torch.zeros(9)
    expected[4] = 1.0
    for row in range(2):
        for col in range(2):
            torch.testing.assert_close(vertical[0, 0, :, row, col], expected)
    # A horizontal edge: gx = 0, gy = -4: atan2(0, -4) = pi, times 9 / pi is 9, which is bin 0 modulo 9.
    horizontal = hog(_step_edge(False))
    expected = torch.zeros(9)
    expected[0] = 1.0
    torch.testing.assert_close(horizontal[0, 0, :, 1, 0], expected)
    # A flat image has no gradient: every histogram is zero (normalising does not divide by zero).
    assert hog(torch.full((2, 3, 8, 8), 0.3)).abs().max() == 0


def test_hog_histograms_are_unit_length_per_cell_and_channel():
    hog = HOG(nbins=9, cell_size=4, window=8)
    out = hog(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (2, 3, 9, 4, 4) and (out >= 0).all()
    torch.testing.assert_close(out.norm(dim=2), torch.ones(2, 3, 4, 4))


def test_each_patch_target_holds_its_own_cells():
    model = MaskFeatForPreTraining(tiny_config(patch_size=8, hog_cell_size=4)).eval()
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = model.hog_targets(pixels)  # (1, 16 patches, 3 channels * 9 bins * 2 * 2 cells)
    cells = model.hog(pixels)  # (1, 3, 9, 8, 8)
    for patch, (row, col) in [(0, (0, 0)), (6, (1, 2)), (15, (3, 3))]:
        block = cells[0, :, :, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2]  # (3, 9, 2, 2)
        torch.testing.assert_close(targets[0, patch], block.reshape(27, 4).t().reshape(-1))


def test_loss_is_the_mse_over_masked_patches_only():
    model = MaskFeatForPreTraining(tiny_config()).train()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 5:9] = True
    out = model(pixels, bool_masked_pos=mask)
    per_patch = (out.logits - out.hog).pow(2).mean(-1)
    torch.testing.assert_close(out.loss, per_patch[mask].mean())
    out.loss.backward()
    grads = {}
    model.zero_grad()
    out = model(pixels, bool_masked_pos=mask)
    out.logits.retain_grad()
    out.loss.backward()
    grads = out.logits.grad
    assert grads[~mask].abs().max() == 0 and grads[mask].abs().max() > 0


def test_cell_size_must_divide_the_patch():
    with pytest.raises(ValueError, match="hog_cell_size=3 is invalid"):
        tiny_config(hog_cell_size=3)


@pytest.mark.parametrize(("patch_size", "cells"), [(4, 4), (8, 4), (5, 5), (6, 6), (2, 2)])
def test_the_small_recipe_takes_4px_cells_where_they_divide_the_patch(patch_size, cells):
    """Issue 28: the small recipe's fixed 4 px cells do not divide the 6 px patches of a 48 px image."""
    fields = METHOD_SPECS["maskfeat"].small.config_for(7 * patch_size, patch_size)
    assert fields["hog_cell_size"] == cells
    assert MaskFeatConfig(image_size=7 * patch_size, patch_size=patch_size, **fields).hog_cell_size == cells


def test_trains_with_the_transformers_trainer(tmp_path):
    model = MaskFeatForPreTraining(tiny_config())
    before = model.head.weight.detach().clone()
    result = Trainer(model=model, args=trainer_args(tmp_path), train_dataset=PixelsOnly(16)).train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before, model.head.weight)


def _cli_flags(tmp_path) -> list[str]:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({k: v for k, v in SPEC.tiny_config.items() if k not in ("image_size", "patch_size")}))
    return ["--method", "maskfeat", "--image-size", "32", "--patch-size", "8", "--config", str(config)]


def test_pretrain_cli_trains_saves_and_draws_the_hog_picture(tmp_path):
    out = tmp_path / "run"
    args = [*_cli_flags(tmp_path), "--max-steps", "3", "--batch-size", "16", "--output-dir", str(out)]
    run = hf_mim_command("pretrain", [*args, "--num-workers", "0"])
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["method"] == "maskfeat" and summary["steps"] == 3
    picture = Image.open(out / "hog.png")
    assert picture.size == (4 * 32 * 4, 8 * 32 * 4)  # 4 panels, 8 images, enlarged 4x
    card = (out / "README.md").read_text()
    assert "MaskFeat encoder" in card and "hog.png" in card and "wei2022masked" in card
    reloaded = MaskFeatForPreTraining.from_pretrained(out)
    assert reloaded.config.hog_cell_size == 4


def test_two_processes_train_what_one_process_trains(tmp_path):
    flags = [*_cli_flags(tmp_path), "--max-steps", "3", "--num-workers", "0"]
    one = hf_mim_command("pretrain", [*flags, "--batch-size", "16", "--output-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = two_processes("pretrain", [*flags, "--batch-size", "8", "--output-dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    summaries = [json.loads((tmp_path / d / "training_summary.json").read_text()) for d in ("one", "two")]
    assert summaries[1]["num_processes"] == 2 and summaries[1]["ranks_in_sync"] is True
    for (s1, l1), (s2, l2) in zip(summaries[0]["loss_history"], summaries[1]["loss_history"], strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-5)  # the same global batch of 16, split in two
    heads = [MaskFeatForPreTraining.from_pretrained(tmp_path / d).head.weight for d in ("one", "two")]
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=1e-4)
