"""Issue 30: continued pretraining from a checkpoint (`hf-mim pretrain --init-from`), defaults that follow the data,
and the plan printed before step 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    ViTConfig,
    ViTForImageClassification,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTModel,
)

from hf_mim import MAEConfig, MAEForPreTraining
from hf_mim.cli import main as cli_main
from hf_mim.modeling.backbone import resize_position_embedding
from hf_mim.modeling.simmim import SimMIMConfig, SimMIMForPreTraining
from hf_mim.training.arguments import PretrainArguments, default_patch_size, image_size_from_data, validate
from hf_mim.warm_start import load_initial_weights, read_checkpoint
from tests.hub_server import HubServer
from tests.test_mae import official_state_dict, transformers_mae

ROOT = Path(__file__).resolve().parent.parent
ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
               decoder_intermediate_size=64)  # fmt: skip


def hf_mim_mae(folder: Path, **fields) -> MAEForPreTraining:
    torch.manual_seed(0)
    model = MAEForPreTraining(MAEConfig(image_size=32, patch_size=8, **ENCODER, **DECODER, **fields))
    model.save_pretrained(folder)
    return model


def transformers_vit(folder: Path, cls=ViTModel, **fields):
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, encoder_stride=8, **ENCODER, **fields)
    model = cls(config) if cls is not ViTModel else cls(config, add_pooling_layer=True)
    with torch.no_grad():  # transformers zero-initialises tables and biases: no slip may hide behind a zero
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(folder)
    return model


def target(method_config=MAEConfig, model_class=MAEForPreTraining, **fields):
    defaults = dict(image_size=32, patch_size=8, **ENCODER)
    if method_config is MAEConfig:
        defaults.update(DECODER)
    return model_class(method_config(**{**defaults, **fields}))


def encoder_features(model, pixels):
    with torch.no_grad():
        return model.vit(pixels).last_hidden_state


# ---- each source kind ------------------------------------------------------------------------------------------


def test_an_hf_mim_model_of_the_same_method_brings_encoder_and_decoder(tmp_path):
    source = hf_mim_mae(tmp_path / "src")
    model = target()
    lines = load_initial_weights(model, read_checkpoint(tmp_path / "src"))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert lines[0].startswith("init from src (hf_mim MAE") and "(decoder, vit)" in lines[0]
    assert "starts fresh: nothing" in lines and "dropped: nothing" in lines


def test_another_method_takes_the_encoder_and_drops_the_rest(tmp_path):
    torch.manual_seed(1)
    SimMIMForPreTraining(SimMIMConfig(image_size=32, patch_size=8, **ENCODER)).save_pretrained(tmp_path / "simmim")
    source = read_checkpoint(tmp_path / "simmim")
    model = target()
    fresh_decoder = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("decoder.")}
    lines = load_initial_weights(model, source)
    for key, value in source.model.state_dict().items():
        if key.startswith("vit."):
            assert torch.equal(model.state_dict()[key], value), key
    assert all(torch.equal(model.state_dict()[k], v) for k, v in fresh_decoder.items())
    assert any(line.startswith("starts fresh: decoder") for line in lines)
    assert any(line.startswith("dropped: ") and "mask_token" in line for line in lines)


def test_a_transformers_vitmae_folder_gives_the_same_model_as_transformers(tmp_path):
    reference = transformers_mae()
    reference.save_pretrained(tmp_path / "tf")
    fields = {k: getattr(reference.config, k) for k in (*ENCODER, *DECODER, "layer_norm_eps", "norm_pix_loss")}
    heads = 1 if fields["num_attention_heads"] != 1 else 2
    with pytest.raises(ValueError, match=f"num_attention_heads={heads} is invalid with --init-from tf, whose"):
        load_initial_weights(target(**{**fields, "num_attention_heads": heads}), read_checkpoint(tmp_path / "tf"))
    model = target(**fields)
    lines = load_initial_weights(model, read_checkpoint(tmp_path / "tf"))
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected, got = reference.eval()(pixel_values=pixels, noise=noise), model.eval()(pixels, noise=noise)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-5)
    assert "transformers ViTMAEForPreTraining" in lines[0]


@pytest.mark.parametrize("cls", [ViTModel, ViTForImageClassification])
def test_a_transformers_vit_gives_its_encoder_and_drops_its_head(tmp_path, cls):
    reference = transformers_vit(tmp_path / "vit", cls, layer_norm_eps=1e-6)
    source = read_checkpoint(tmp_path / "vit")
    assert source.kind == f"transformers {cls.__name__}"
    model = target(position_embedding_type="learned", layer_norm_eps=1e-6)
    lines = load_initial_weights(model, source)
    pixels = torch.randn(2, 3, 32, 32)
    vit = reference if cls is ViTModel else reference.vit
    with torch.no_grad():
        expected = vit.eval()(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(encoder_features(model.eval(), pixels), expected, rtol=0, atol=1e-5)
    dropped = next(line for line in lines if line.startswith("dropped: "))
    assert ("classifier" if cls is ViTForImageClassification else "pooler") in dropped
    assert any(line.startswith("starts fresh: decoder") for line in lines)


def test_an_official_pth_brings_encoder_and_decoder(tmp_path):
    torch.manual_seed(0)
    # ViT-Ti's width, whose 3 heads the loader knows; MAE's decoders have 16 heads
    dims = dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=64,
                decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=16,
                decoder_intermediate_size=64)  # fmt: skip
    reference = ViTMAEForPreTraining(
        ViTMAEConfig(image_size=32, patch_size=8, layer_norm_eps=1e-6, norm_pix_loss=True, **dims)
    )
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    torch.save({"model": official_state_dict(reference), "epoch": 3}, tmp_path / "mae.pth")
    model = target(**dims, layer_norm_eps=1e-6, norm_pix_loss=True)
    lines = load_initial_weights(model, read_checkpoint(tmp_path / "mae.pth"))
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        expected, got = reference.eval()(pixel_values=pixels, noise=noise), model.eval()(pixels, noise=noise)
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=1e-5)
    assert lines[0].startswith("init from mae.pth (facebookresearch/mae state dict): loaded")
    assert "starts fresh: nothing" in lines


def test_a_file_that_is_no_checkpoint_and_a_missing_path_are_one_line(tmp_path):
    (tmp_path / "notes.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="refusing to unpickle it"):
        read_checkpoint(tmp_path / "notes.pth")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "absent" / "model")


# ---- adaptation ------------------------------------------------------------------------------------------------


def test_a_new_image_size_resamples_a_learned_table_and_recomputes_a_sincos_one(tmp_path):
    transformers_vit(tmp_path / "vit", layer_norm_eps=1e-6)
    source = read_checkpoint(tmp_path / "vit")
    model = target(position_embedding_type="learned", layer_norm_eps=1e-6, image_size=48)
    lines = load_initial_weights(model, source)
    expected = resize_position_embedding(source.model.vit.pos_embed, (4, 4), (6, 6))
    assert torch.equal(model.vit.pos_embed, expected)
    assert "position embeddings: resampled bicubically from the 4x4 grid of 32 px to the 6x6 grid of 48 px" in lines

    hf_mim_mae(tmp_path / "mae")
    model = target(image_size=48)
    own_table = model.vit.pos_embed.clone()
    lines = load_initial_weights(model, read_checkpoint(tmp_path / "mae"))
    assert torch.equal(model.vit.pos_embed, own_table)  # the exact sin-cos table of the new grid
    assert any("recomputed (sin-cos) from the 4x4 grid" in line for line in lines)


@pytest.mark.parametrize(("source_channels", "channels"), [(3, 1), (1, 3)])
def test_a_new_channel_count_adapts_the_patch_embedding(tmp_path, source_channels, channels):
    """A grey image gives the adapted model the features the source gives the same image as equal channels."""
    source = hf_mim_mae(tmp_path / "src", num_channels=source_channels)
    model = target(num_channels=channels)
    lines = load_initial_weights(model, read_checkpoint(tmp_path / "src"))
    grey = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(
        encoder_features(model.eval(), grey.expand(-1, channels, -1, -1)),
        encoder_features(source.eval(), grey.expand(-1, source_channels, -1, -1)),
        rtol=0,
        atol=1e-5,
    )
    how = "summed" if channels < source_channels else "repeated and divided by 3"
    assert f"patch embedding: {source_channels} input channels {how} to {channels}" in lines
    assert model.decoder.pred.weight.shape[0] == 8 * 8 * channels


def test_a_patch_size_or_width_change_is_refused_naming_both_values(tmp_path):
    hf_mim_mae(tmp_path / "src")
    source = read_checkpoint(tmp_path / "src")
    with pytest.raises(ValueError, match=r"--patch-size=4 is invalid with --init-from src, whose patch_size is 8"):
        load_initial_weights(target(patch_size=4), source)
    with pytest.raises(ValueError, match=r"hidden_size=64 is invalid with --init-from src, whose hidden_size is 32"):
        load_initial_weights(target(hidden_size=64, intermediate_size=64), source)
    with pytest.raises(ValueError, match="--model-size='tiny' is invalid: not used with --init-from"):
        validate(PretrainArguments(init_from=str(tmp_path / "src"), model_size="tiny"))


# ---- defaults that follow the data -----------------------------------------------------------------------------


def test_continued_pretraining_takes_a_tenth_of_the_recipes_base_lr_unless_given(tmp_path):
    from hf_mim.modeling.auto import method_spec
    from hf_mim.training.arguments import resolve_defaults

    small = method_spec("mae").recipe("small").base_lr
    fields = {"patch_size": 8, **ENCODER}
    continued = resolve_defaults(PretrainArguments(init_from="x"), 1437, [(8, 8)], fields, same_method=True)
    assert continued.base_lr == pytest.approx(small / 10) and continued.model_size is None
    assert continued.reasons["base_lr"] == "a tenth of the small recipe's, for continued pretraining"
    assert (continued.image_size, continued.patch_size) == (32, 8)
    given = resolve_defaults(PretrainArguments(init_from="x", base_lr=0.5), 1437, [(8, 8)], fields, True)
    assert given.base_lr == 0.5
    assert resolve_defaults(PretrainArguments(), 1437, [(8, 8)]).base_lr == small


@pytest.mark.parametrize(
    ("sizes", "patch", "size"),
    [
        ([(8, 8)] * 9, None, 32),  # the built-in digits
        ([(28, 28)] * 9, None, 28),  # Fashion-MNIST, at its own size
        ([(28, 28)] * 9 + [(64, 64)] * 2, None, 28),  # the most common size
        ([(37, 40)], None, 36),  # cut to a multiple of 4 px
        ([(500, 375)], None, 224),  # never above 224 unasked
        ([(150, 150)], None, 144),  # a multiple of 16 from 128 px
        ([(28, 28)], 16, 32),  # a checkpoint's 16 px patches
        ([], None, 224),
    ],
)
def test_the_image_size_comes_from_the_images(sizes, patch, size):
    assert image_size_from_data(sizes, patch)[0] == size


@pytest.mark.parametrize(
    ("image_size", "patch"), [(28, 4), (32, 4), (64, 8), (96, 12), (224, 16), ([48, 64], 4), (56, 8)]
)
def test_default_patch_size_makes_a_grid_of_at_least_7_by_7_below_128_px(image_size, patch):
    assert default_patch_size(image_size) == patch


def write_grey_folder(folder: Path, count: int = 24, size: int = 28) -> Path:
    folder.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = (torch.rand(size, size, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return folder


def run_cli(argv, capsys):
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_28_px_folder_trains_at_its_own_size_and_the_plan_says_so(tmp_path, capsys):
    data = write_grey_folder(tmp_path / "fashion")
    out_dir = tmp_path / "run"
    argv = ["pretrain", "--dataset", str(data), "--max-steps", "2", "--batch-size", "8", "--num-workers", "0",
            "--output-dir", str(out_dir), "--config", str(_tiny_config(tmp_path))]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    plan = out[out.index("plan:") :]
    assert "image size       28 px (the images are 28x28 (24 of 24 sampled): their own size)" in plan
    assert "patch size       4 px: 7x7 patches" in plan
    assert plan.index("plan:") < plan.index("done:")
    config = json.loads((out_dir / "config.json").read_text())
    assert (config["image_size"], config["patch_size"]) == (28, 4)
    summary = json.loads((out_dir / "training_summary.json").read_text())
    assert summary["plan"]["image size"].startswith("28 px") and summary["init_from"] is None
    # a local dataset is named by its folder, never by its path: the card and summary are pushed
    for name in ("README.md", "training_summary.json"):
        assert str(tmp_path) not in (out_dir / name).read_text(), name
    assert "fashion (image folder)" in (out_dir / "README.md").read_text()


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**ENCODER, **DECODER}))
    return path


def test_pretrain_continues_a_local_checkpoint_and_records_it_without_its_path(tmp_path, capsys):
    source = hf_mim_mae(tmp_path / "public-mae")
    out_dir = tmp_path / "run"
    argv = ["pretrain", "--init-from", str(tmp_path / "public-mae"), "--max-steps", "1", "--batch-size", "8",
            "--output-dir", str(out_dir), "--lr", "1e-12"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    assert "weights          public-mae (hf_mim MAE" in out
    assert "ViT, the checkpoint's: 2 blocks, width 32" in out
    trained = MAEForPreTraining.from_pretrained(out_dir)
    # one step at lr 1e-12 leaves the loaded weights (AdamW's first step moves each by about lr)
    torch.testing.assert_close(trained.vit.blocks[0].attn.qkv.weight, source.vit.blocks[0].attn.qkv.weight)
    summary = json.loads((out_dir / "training_summary.json").read_text())
    assert summary["init_from"]["name"] == "public-mae" and summary["init_from"]["hub_id"] is None
    card = (out_dir / "README.md").read_text()
    assert "initialised from `public-mae` (a local checkpoint)" in card and "base_model" not in card
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(summary)


def test_a_hub_id_is_downloaded_and_becomes_the_cards_base_model(tmp_path):
    hf_mim_mae(tmp_path / "src")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "home"),
           "HF_TOKEN": "test-token", "PYTHONPATH": str(ROOT)}  # fmt: skip
    with HubServer() as hub:
        env["HF_ENDPOINT"] = hub.url
        upload = (
            "from huggingface_hub import HfApi; api = HfApi(); api.create_repo('tester/public-mae'); "
            f"api.upload_folder(repo_id='tester/public-mae', folder_path={str(tmp_path / 'src')!r})"
        )
        subprocess.run([sys.executable, "-c", upload], env=env, check=True, capture_output=True, timeout=300)
        result = subprocess.run(
            [sys.executable, "-m", "hf_mim", "pretrain", "--init-from", "tester/public-mae", "--max-steps", "1",
             "--batch-size", "8", "--output-dir", str(tmp_path / "run")],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "weights          tester/public-mae (hf_mim MAE" in result.stdout
    card = (tmp_path / "run" / "README.md").read_text()
    assert "base_model: tester/public-mae" in card
    assert "initialised from [tester/public-mae](https://huggingface.co/tester/public-mae)" in card


def test_the_trainer_example_continues_a_transformers_checkpoint(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ViTMAEForPreTraining(ViTMAEConfig(image_size=32, patch_size=8, **ENCODER, **DECODER)).save_pretrained(
            tmp_path / "tf"
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_pretraining.py"), "--model_name_or_path", str(tmp_path / "tf"),
         "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--per_device_train_batch_size", "8",
         "--report_to", "none", "--use_cpu"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "init from tf (transformers ViTMAEForPreTraining): loaded" in result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["hidden_size"] == 32


def _bench_adapt():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_adapt", ROOT / "benchmarks" / "bench_adapt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_adaptation_benchmark_refuses_in_one_line_without_fashion_mnist(tmp_path, capsys, monkeypatch):
    bench = _bench_adapt()
    monkeypatch.setattr(bench, "FASHION_MNIST", tmp_path / "absent")
    assert bench.main(["--workdir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err
    assert not (tmp_path / "work").exists()


def test_the_adaptation_benchmark_reads_idx_images(tmp_path):
    import gzip

    import numpy as np

    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in pixels.shape)
    with gzip.open(tmp_path / "images.gz", "wb") as f:
        f.write(header + pixels.tobytes())
    assert np.array_equal(_bench_adapt().read_idx_images(tmp_path / "images.gz"), pixels)


def test_the_adaptation_benchmark_runs_every_row_and_resumes(tmp_path, monkeypatch, capsys):
    """Every row, on a stand-in Fashion-MNIST of 96 random images (CI has no apt package); a rerun trains nothing."""
    import gzip

    import numpy as np

    bench = _bench_adapt()
    data = tmp_path / "fmnist"
    data.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (96, 28, 28), dtype=np.uint8)
    with gzip.open(data / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write((2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in pixels.shape) + pixels.tobytes())
    monkeypatch.setattr(bench, "FASHION_MNIST", data)
    argv = ["--standin-steps", "2", "--steps", "2", "--seeds", "0", "1", "--linear-epochs", "3"]
    argv += ["--workdir", str(tmp_path / "work")]
    assert bench.main(argv) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| model")}  # fmt: skip
    assert set(rows) == set(bench.ROWS)
    for name in ("adapted from transformers", "adapted from hf_mim", "adapted from hf_mim, from-scratch lr"):
        assert rows[name][0].count("±") == 1 and rows[name][2].count("±") == 1  # 2 seeds; the paired difference
    assert "±" not in rows["raw pixels"][0] and float(rows["raw pixels"][1]) > 90  # 64 pixels, logistic regression
    adapted = json.loads((tmp_path / "work" / "adapted-tf-standin2-steps2-0" / "training_summary.json").read_text())
    assert adapted["init_from"]["name"] == "standin-transformers-2" and adapted["steps"] == 2
    assert json.loads((tmp_path / "work" / "standin-transformers-2" / "config.json").read_text())["num_channels"] == 1
    recorded = (tmp_path / "work" / "results.json").read_text()
    assert bench.main(argv) == 0  # resumes: every part is in results.json
    assert (tmp_path / "work" / "results.json").read_text() == recorded
