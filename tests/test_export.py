"""Issue 30: `hf-mim export --format transformers` writes models that transformers loads alone: the same features
(ViTModel) and the same loss (ViTMAEForPreTraining), also in a process that cannot import hf_mim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModel, ViTMAEForPreTraining, ViTModel

import hf_mim  # noqa: F401  (registers the hf_mim classes with the Auto classes)
from hf_mim.cli import main as cli_main
from hf_mim.export import export_model
from hf_mim.modeling.auto import METHOD_SPECS
from tests.hub_server import HubServer
from tests.test_hub import minimal_site

ROOT = Path(__file__).resolve().parent.parent
PLAIN_VIT = ["mae", "simmim", "maskfeat", "rmae", "cmae", "adios"]


def saved(method: str, folder: Path, **fields):
    spec = METHOD_SPECS[method]
    torch.manual_seed(0)
    model = spec.pretraining_class(spec.config_class(**{**spec.tiny_config, **fields}))
    with torch.no_grad():  # no table or bias left at its initial value, so that no mapping slip can hide
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("method", PLAIN_VIT)
def test_the_encoder_exports_as_vitmodel_with_the_same_features(tmp_path, method):
    saved(method, tmp_path / "src", **({"num_channels": 1} if method == "simmim" else {}))
    lines = export_model(tmp_path / "src", tmp_path / "dst")
    expected_class = ViTMAEForPreTraining if method == "mae" else ViTModel
    assert lines[0].startswith(f"wrote {expected_class.__name__}")
    ours = AutoModel.from_pretrained(tmp_path / "src").eval()
    pixels = torch.randn(2, ours.config.num_channels, *([ours.config.image_size] * 2))
    with torch.no_grad():
        mine = ours(pixel_values=pixels)
        if method == "mae":
            theirs = ViTMAEForPreTraining.from_pretrained(tmp_path / "dst").eval()
            theirs.config.mask_ratio = 0.0  # unmasked, in grid order: the encoder's plain features
            grid = ours.config.num_patches
            hidden = theirs.vit(pixel_values=pixels, noise=torch.arange(float(grid)).expand(2, grid)).last_hidden_state
        else:
            theirs = ViTModel.from_pretrained(tmp_path / "dst").eval()
            out = theirs(pixel_values=pixels)
            hidden = out.last_hidden_state
            # the pooler is the identity on the CLS token: hf_mim's pooling="cls"
            torch.testing.assert_close(out.pooler_output, mine.pooler_output, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden, mine.last_hidden_state, rtol=0, atol=1e-5)
    processor = AutoImageProcessor.from_pretrained(tmp_path / "dst")
    assert processor.size == {"height": ours.config.image_size, "width": ours.config.image_size}
    assert list(processor.image_mean) == pytest.approx(ours.config.image_mean)


def test_mae_exports_with_its_decoder_the_same_loss_for_the_same_noise(tmp_path):
    ours = saved("mae", tmp_path / "src", norm_pix_loss=True).eval()
    export_model(tmp_path / "src", tmp_path / "dst")
    theirs = ViTMAEForPreTraining.from_pretrained(tmp_path / "dst").eval()
    pixels, noise = torch.randn(3, 3, 32, 32), torch.rand(3, ours.config.num_patches)
    with torch.no_grad():
        a, b = ours(pixel_values=pixels, noise=noise), theirs(pixel_values=pixels, noise=noise)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-5)
    assert torch.equal(a.mask, b.mask)


@pytest.mark.parametrize(
    ("method", "reason"),
    [("beit", "LayerScale"), ("visual-tokenizer", "holds no ViT encoder")],
)
def test_a_model_transformers_vit_cannot_hold_is_refused_in_one_line(tmp_path, capsys, method, reason):
    saved(method, tmp_path / "src")
    assert cli_main(["export", str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("hf-mim export: error: ") and reason in errors[0], errors
    assert not (tmp_path / "dst").exists()


def test_export_refuses_a_destination_holding_a_model(tmp_path, capsys):
    saved("simmim", tmp_path / "src")
    saved("simmim", tmp_path / "other")
    before = (tmp_path / "other" / "model.safetensors").read_bytes()
    assert cli_main(["export", str(tmp_path / "src"), str(tmp_path / "other")]) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert (tmp_path / "other" / "model.safetensors").read_bytes() == before


def test_the_export_loads_in_a_process_without_hf_mim_and_without_remote_code(tmp_path):
    """`python -S` with only transformers, torch and Pillow importable: AutoModel gives transformers' own class, with
    trust_remote_code left off, and the same features as hf_mim's."""
    for method in ("mae", "cmae"):
        saved(method, tmp_path / method)
        export_model(tmp_path / method, tmp_path / f"{method}-tf")
        ours = AutoModel.from_pretrained(tmp_path / method).eval()
        pixels = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            save_file(
                {"pixels": pixels, "features": ours(pixel_values=pixels).last_hidden_state.contiguous()},
                str(tmp_path / f"{method}.safetensors"),
            )
    site, installed = minimal_site(tmp_path / "site")
    assert "hf-mim" not in installed and "hf_mim" not in installed
    script = """
import json, sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoImageProcessor
try:
    import hf_mim
    sys.exit("hf_mim is importable")
except ImportError:
    pass
out = {}
for method in ("mae", "cmae"):
    folder = sys.argv[1] + "/" + method + "-tf"
    model = AutoModel.from_pretrained(folder).eval()  # trust_remote_code is off by default
    AutoImageProcessor.from_pretrained(folder)
    data = load_file(sys.argv[1] + "/" + method + ".safetensors")
    with torch.no_grad():
        if type(model).__name__ == "ViTMAEModel":
            model.config.mask_ratio = 0.0
            n = data["pixels"].shape[0]
            grid = model.config.image_size // model.config.patch_size
            noise = torch.arange(float(grid * grid)).expand(n, grid * grid)
            hidden = model(pixel_values=data["pixels"], noise=noise).last_hidden_state
        else:
            hidden = model(pixel_values=data["pixels"]).last_hidden_state
    out[method] = [type(model).__name__, (hidden - data["features"]).abs().max().item()]
print("REPORT " + json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", script, str(tmp_path)],
        env={**env, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("REPORT "))[7:])
    assert report["mae"][0] == "ViTMAEModel" and report["cmae"][0] == "ViTModel"
    assert all(difference < 1e-5 for _, difference in report.values()), report
    assert json.loads((tmp_path / "cmae-tf" / "config.json").read_text()).get("auto_map") is None
    assert "model.safetensors" in os.listdir(tmp_path / "cmae-tf")
    assert set(load_file(str(tmp_path / "cmae-tf" / "model.safetensors"))) >= {"pooler.dense.weight"}


def test_push_format_transformers_uploads_transformers_weights_with_the_same_card(tmp_path):
    """`hf-mim push --format transformers` of a pretraining run: transformers' config and weights, no modeling code,
    the run's records and pictures, and a card whose snippets need neither hf_mim nor remote code."""
    from tests.tiny_runs import TINY_FLAGS

    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "home"),
           "HF_TOKEN": "test-token", "PYTHONPATH": str(ROOT)}  # fmt: skip
    run = tmp_path / "run"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 64, "decoder_hidden_size": 32}))  # fmt: skip
    trained = subprocess.run(
        [sys.executable, "-m", "hf_mim", "pretrain", "--max-steps", "2", "--batch-size", "8", *TINY_FLAGS,
         "--config", str(config), "--output-dir", str(run)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    with HubServer() as hub:
        env["HF_ENDPOINT"] = hub.url
        pushed = subprocess.run(
            [sys.executable, "-m", "hf_mim", "push", str(run), "tester/mae-tf", "--format", "transformers"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        files = hub.files("tester/mae-tf")
    assert not any(name.endswith(".py") for name in files), sorted(files)
    assert json.loads(files["config.json"])["model_type"] == "vit_mae"
    assert "auto_map" not in json.loads(files["config.json"])
    assert {"model.safetensors", "preprocessor_config.json", "training_summary.json", "loss_curve.png"} <= set(files)
    for name, content in files.items():  # the run records go up without the uploader's folders
        if name.endswith((".json", ".md")):
            assert str(tmp_path) not in content.decode(), name
    assert json.loads(files["training_args.json"])["output_dir"] == "run"
    assert str(tmp_path) in (run / "training_args.json").read_text()  # the local record is left as written
    card = files["README.md"].decode()
    assert "trust_remote_code" not in card and "custom_code" not in card
    assert "transformers' own `ViTMAEForPreTraining`" in card and "| Model class | `ViTMAEForPreTraining` |" in card
    (tmp_path / "downloaded").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "downloaded" / name).write_bytes(files[name])
    theirs = ViTMAEForPreTraining.from_pretrained(tmp_path / "downloaded")
    ours = AutoModel.from_pretrained(run)
    torch.testing.assert_close(theirs.vit.embeddings.cls_token, ours.vit.cls_token, rtol=0, atol=0)
