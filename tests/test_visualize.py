"""`hf-mim visualize` and the token pictures: every method with a picture writes it, checked pixel by pixel."""

import numpy as np
import pytest
import torch
from PIL import Image

from hf_mim import (
    ADIOSConfig,
    ADIOSForPreTraining,
    BEiTConfig,
    BEiTForPreTraining,
    CMAEConfig,
    CMAEForPreTraining,
    MAEConfig,
    MAEForPreTraining,
    VisualTokenizer,
    VisualTokenizerConfig,
)
from hf_mim.model_cards.pictures import token_colours, token_grid

from .images import BAD, write_image_folder
from .launch import in_process as cli

ENCODER = dict(
    image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
TOKENIZER = dict(image_size=16, patch_size=4, vocab_size=16, embedding_dim=8, hidden_channels=8)


def _save(model, folder):
    model.save_pretrained(folder)
    return str(folder)


def test_token_colours_are_stable_and_distinct_for_nearby_ids():
    colours = token_colours(torch.arange(64))
    assert colours.shape == (64, 3) and colours.min() >= 0 and colours.max() <= 255
    assert torch.equal(token_colours(torch.tensor([5, 5])), colours[[5, 5]])
    assert len({tuple(c.round().tolist()) for c in colours}) == 64
    assert (colours[1:] - colours[:-1]).abs().sum(dim=1).min() > 30  # neighbours never look alike


def test_token_grid_paints_each_patch_and_darkens_wrong_predictions():
    images = torch.zeros(1, 1, 8, 8)  # two by two patches of 4 px, mid-grey after de-normalisation
    ids = torch.tensor([[0, 1, 2, 3]])
    masked = torch.tensor([[False, True, True, False]])
    predicted = torch.tensor([[9, 1, 7, 9]])  # right at patch 1, wrong at patch 2; visible patches ignored
    picture = token_grid(images, ids, 4, [0.5], [0.5], bool_masked_pos=masked, predicted_ids=predicted)
    assert picture.size == (8 * 4, 8)  # image, masked input, token map, predicted map
    grid = torch.from_numpy(np.array(picture)).float()  # (8, 32, 3)
    token_map, predicted_map = grid[:, 16:24], grid[:, 24:32]
    colours = token_colours(torch.arange(10)).round()
    for patch, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.equal(token_map[4 * row + 1, 4 * col + 2], colours[ids[0, patch]])
    assert torch.equal(predicted_map[1, 1], colours[0])  # visible: the true token
    assert torch.equal(predicted_map[1, 5], colours[1])  # masked and right
    assert torch.equal(predicted_map[5, 1], (token_colours(torch.tensor(7)) * 0.4).round())  # masked and wrong
    masked_input = grid[:, 8:16]
    assert masked_input[1, 5].tolist() == [127.0] * 3 and masked_input[1, 1].tolist() == [128.0] * 3


@pytest.mark.parametrize(
    "kind, picture, columns",
    [
        ("mae", "reconstruction.png", 4),
        ("beit", "tokens.png", 6),
        ("tokenizer", "tokens.png", 3),
        ("adios", "masks.png", 5),
    ],
)
def test_visualize_writes_each_methods_picture(tmp_path, kind, picture, columns):
    torch.manual_seed(0)
    if kind == "mae":
        model = MAEForPreTraining(MAEConfig(**ENCODER, decoder_hidden_size=16, decoder_num_hidden_layers=1))
    elif kind == "beit":
        tokenizer = VisualTokenizer(VisualTokenizerConfig(**TOKENIZER))
        model = BEiTForPreTraining(BEiTConfig(**ENCODER, vocab_size=16, mask_min_num_patches=2), tokenizer=tokenizer)
    elif kind == "tokenizer":
        model = VisualTokenizer(VisualTokenizerConfig(**TOKENIZER))
    else:
        model = ADIOSForPreTraining(
            ADIOSConfig(**ENCODER, num_masks=3, occlusion_base_channels=8, projection_hidden_size=16, projection_size=8)
        )
    folder = _save(model, tmp_path / "model")
    out = tmp_path / "pictures"
    run = cli("visualize", ["--model", folder, "--num-images", "3", "--scale", "2", "--output-dir", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"wrote {out / picture}" in run.stdout
    image = Image.open(out / picture)
    assert image.size == (16 * 2 * columns, 16 * 2 * 3)  # one row per image, one column per panel


def test_visualize_reads_image_files_and_skips_bad_ones(tmp_path):
    model = MAEForPreTraining(MAEConfig(**ENCODER, decoder_hidden_size=16, decoder_num_hidden_layers=1))
    folder = _save(model, tmp_path / "model")
    images = write_image_folder(tmp_path / "images")  # every image mode, and empty, truncated, non-image files
    out = tmp_path / "pictures"
    args = ["--model", folder, "--images", str(images), "--num-images", "20", "--scale", "1", "--output-dir", str(out)]
    run = cli("visualize", args)
    assert run.returncode == 0, run.stderr[-3000:]
    good = len([p for p in images.iterdir() if p.name not in BAD])
    assert Image.open(out / "reconstruction.png").size == (16 * 4, 16 * good)


def test_visualize_refuses_cmae_and_missing_files_in_one_line(tmp_path):
    cmae = CMAEForPreTraining(CMAEConfig(**ENCODER, projection_hidden_size=16, projection_size=8))
    folder = _save(cmae, tmp_path / "cmae")
    run = cli("visualize", ["--model", folder, "--output-dir", str(tmp_path / "o")])
    assert run.returncode == 2 and "C-MAE's targets are features" in run.stderr and "Traceback" not in run.stderr
    mae = _save(
        MAEForPreTraining(MAEConfig(**ENCODER, decoder_hidden_size=16, decoder_num_hidden_layers=1)), tmp_path / "m"
    )
    run = cli("visualize", ["--model", mae, "--images", str(tmp_path / "nope.png")])
    assert run.returncode == 2 and "no such file or folder" in run.stderr
