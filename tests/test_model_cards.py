"""Model cards, pictures, the remote-code export and hf_mim's own path checks, in-process and offline."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

import hf_mim
from hf_mim.hub import check_path_in_repo, check_repo_id, files_to_upload
from hf_mim.model_cards import GENERATED_MARKER, build_model_card, model_card_for_folder, validate_model_card
from hf_mim.model_cards.pictures import (
    reconstruct,
    reconstruction_error,
    reconstruction_grid,
    save_loss_curve,
    save_method_pictures,
)
from hf_mim.modeling.auto import SPECS_BY_MODEL_TYPE
from hf_mim.modeling.base import export_remote_code
from hf_mim.modeling.losses import normalize_patches
from hf_mim.modeling.spec import TINY_VIT

# the methods' tiny ViT with one block: these tests read cards and pictures, not features
TINY = dict(TINY_VIT, num_hidden_layers=1)
SECTIONS = ("## Method", "## Architecture", "## Training", "## Evaluation", "## How to use", "## Limitations")


def _config(model_type):
    spec = SPECS_BY_MODEL_TYPE[model_type]
    return spec.config_class(**spec.tiny_config)


@pytest.mark.parametrize("model_type", sorted(SPECS_BY_MODEL_TYPE))
def test_a_bare_card_is_valid_complete_and_says_what_is_unknown(model_type):
    config = _config(model_type)
    spec = SPECS_BY_MODEL_TYPE[model_type]
    config.architectures = [spec.auto_classes["AutoModel"].__name__]
    card = build_model_card(config, total_parameters=1234)
    data = ModelCard(str(card), ignore_metadata_errors=False).data.to_dict()
    method = spec.card
    assert data["tags"][:2] == ["hf-mim", spec.name]
    # a visual tokenizer gives token ids, which no pipeline task returns
    assert data.get("pipeline_tag") == ("image-feature-extraction" if spec.card.encoder else None)
    assert data["license"] == "apache-2.0"
    assert "datasets" not in data and "base_model" not in data and "model-index" not in data
    for section in SECTIONS:
        assert section in card.text
    assert method.paper_url in card.text and method.bibtex in card.text
    assert "Unknown. This model was not saved by an `hf-mim pretrain` or `transformers.Trainer` run" in card.text
    assert "No evaluation results are recorded" in card.text
    assert "| Parameters | 1,234 |" in card.text
    assert card.text.rstrip().endswith(GENERATED_MARKER)


def test_a_run_card_has_the_recipe_pictures_datasets_and_a_model_index(tmp_path):
    model = hf_mim.MAEForPreTraining(hf_mim.MAEConfig(**TINY, decoder_hidden_size=32, decoder_num_hidden_layers=1))
    summary = {
        "method": "mae",
        "dataset": "someone/images",
        "dataset_id": "someone/images",
        "num_samples": 5000,
        "steps": 100,
        "epochs": 2,
        "effective_batch_size": 256,
        "learning_rate": 0.0015,
        "mixed_precision": "bf16",
        "hardware": "8 x NVIDIA H100",
        "wall_time_seconds": 12.5,
        "images_per_second": 2048.0,
        "final_loss": 0.42,
        "loss_history": [[10, 1.0], [20, 0.8]],
    }
    (tmp_path / "training_summary.json").write_text(json.dumps(summary))
    (tmp_path / "training_args.json").write_text(json.dumps({"weight_decay": 0.05, "seed": 3}))
    results = [{"protocol": "knn", "dataset": "digits", "metric": "accuracy", "value": 0.875, "split": "test"}]
    (tmp_path / "eval_results.json").write_text(json.dumps({"results": results}))
    save_loss_curve(summary["loss_history"], tmp_path / "loss_curve.png")
    model.save_pretrained(tmp_path)  # writes README.md through the hub hook
    card = ModelCard.load(tmp_path / "README.md", ignore_metadata_errors=False)
    assert card.data.datasets == ["someone/images"]
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type, result.dataset_split) == (
        "accuracy",
        0.875,
        "digits",
        "test",
    )
    for row in (
        "| Optimizer steps | 100 |",
        "| Effective batch size | 256 |",
        "| Precision | bf16 |",
        "| Hardware | 8 x NVIDIA H100 |",
        "| Wall time | 12.5 s (2048.0 images/s) |",
        "| Seed | 3 |",
        "| knn | digits | test | accuracy | 0.875 |",
        "| Masking | random, ratio 0.75 |",
    ):
        assert row in card.text, row
    assert "![Training loss](loss_curve.png)" in card.text and "reconstruction.png" not in card.text
    assert "demonstration-scale" in card.text  # 5,000 images


def test_a_classifier_card_names_its_base_model_and_classification_pipeline():
    config = hf_mim.MAEConfig(**TINY, num_labels=4)
    config.architectures = ["MAEForImageClassification"]
    card = build_model_card(config, base_model="someone/mae-base", repo_id="someone/mae-cls")
    assert card.data.base_model == "someone/mae-base" and card.data.pipeline_tag == "image-classification"
    assert "image-classification" in card.data.tags and "fine-tuned from [someone/mae-base]" in card.text


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("license", "not-a-license", "license='not-a-license'"),
        ("pipeline_tag", "text-generation", "pipeline_tag='text-generation'"),
        ("base_model", "../../etc", "base_model='../../etc'"),
        ("datasets", ["a/b/c"], "datasets="),
        ("tags", ["has space"], "tags="),
    ],
)
def test_local_validation_rejects_bad_metadata_naming_the_field(field, value, match):
    card = build_model_card(_config("hf_mim_mae"))
    setattr(card.data, field, value)
    with pytest.raises(ValueError, match=match):
        validate_model_card(card)


def test_eval_results_without_a_value_fail_naming_the_entry():
    with pytest.raises(ValueError, match=r"eval_results\[0\] lacks \['value'\]"):
        build_model_card(_config("hf_mim_mae"), eval_results=[{"protocol": "knn", "dataset": "d", "metric": "acc"}])


def test_saving_never_overwrites_a_card_a_person_wrote_but_refreshes_a_generated_one(tmp_path):
    model = hf_mim.MAEModel(hf_mim.MAEConfig(**TINY))
    model.save_pretrained(tmp_path)
    generated = (tmp_path / "README.md").read_text()
    assert GENERATED_MARKER in generated
    (tmp_path / "training_summary.json").write_text(json.dumps({"method": "mae", "dataset": "x", "steps": 7}))
    model.save_pretrained(tmp_path)
    assert "| Optimizer steps | 7 |" in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# mine\n")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "---\nlicense: mit\n---\n# mine\n"


@pytest.mark.parametrize(
    "bad", ["..", "../x", "a/../b", "/etc/passwd", "C:\\x", "c:x", "\\\\server\\share", "//server/share", "a//b", ""]
)
def test_path_and_repo_id_checks_reject_traversal_absolute_drive_and_unc(bad):
    with pytest.raises(ValueError, match="path_in_repo="):
        check_path_in_repo(bad)
    with pytest.raises(ValueError, match="repo_id="):
        check_repo_id(bad)


@pytest.mark.parametrize("good", ["model", "user/model", "org-1/model_v2.1"])
def test_repo_id_check_accepts_hub_ids(good):
    assert check_repo_id(good) == good


def test_only_safetensors_config_records_and_pictures_are_taken_from_the_folder(tmp_path):
    hf_mim.MAEModel(hf_mim.MAEConfig(**TINY)).save_pretrained(tmp_path)
    for name in ("optimizer.bin", "pytorch_model.bin", "weights.pt", "notes.txt", "train.py"):
        (tmp_path / name).write_bytes(b"x")
    Image.new("RGB", (2, 2)).save(tmp_path / "loss_curve.png")
    (tmp_path / "checkpoints" / "step-1").mkdir(parents=True)
    uploaded, left_out = files_to_upload(tmp_path)
    assert set(uploaded) == {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
        "loss_curve.png",
    }
    # modeling code is exported fresh by push_folder, never read from the folder (a script there stays local)
    code = {"backbone.py", "base.py", "classification.py", "heads.py", "losses.py", "mae.py", "masking.py", "spec.py"}
    assert (
        set(left_out)
        == {"optimizer.bin", "pytorch_model.bin", "weights.pt", "notes.txt", "train.py", "checkpoints"} | code
    )
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(
        ValueError,
        match=r"no model.safetensors \(only pickle files: \['optimizer.bin', 'pytorch_model.bin', 'weights.pt'\]",
    ):
        files_to_upload(tmp_path)


def test_symlinked_weights_as_in_the_hub_cache_are_uploaded(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    folder, blobs = cache / "models--me--mae" / "snapshots" / "0123abc", cache / "models--me--mae" / "blobs"
    hf_mim.MAEModel(hf_mim.MAEConfig(**TINY)).save_pretrained(folder)
    blobs.mkdir()
    (folder / "model.safetensors").rename(blobs / "abc123")
    (folder / "model.safetensors").symlink_to(blobs / "abc123")
    Image.new("RGB", (2, 2)).save(folder / "real.png")
    (folder / "loss_curve.png").symlink_to(folder / "real.png")  # a link inside the folder is fine too
    uploaded = files_to_upload(folder)[0]
    assert "model.safetensors" in uploaded and "loss_curve.png" in uploaded
    assert "real.png" not in uploaded  # no picture of hf_mim's: it goes up only when named with --include


@pytest.mark.parametrize("name", ["loss_curve.png", "model.safetensors", "training_summary.json"])
def test_a_link_out_of_the_folder_is_refused_before_any_request(tmp_path, monkeypatch, name):
    """Issue 17: an allow-listed name linking to /etc/passwd used to go up as that file's content."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = tmp_path / "model"
    hf_mim.MAEModel(hf_mim.MAEConfig(**TINY)).save_pretrained(folder)
    secret = tmp_path / "elsewhere" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(secret)
    requests = []
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: requests.append(a))
    with pytest.raises(ValueError, match=rf"{name} links to .*passwd, outside"):
        hf_mim.hub.push_folder(folder, "me/model")
    assert not requests


@pytest.mark.parametrize(
    ("name", "content"),
    [("loss_curve.png", b"root:x:0:0\n"), ("model.safetensors", b"\xff" * 8 + b"{}"), ("eval_results.json", b"{oops")],
)
def test_an_uploaded_file_must_be_what_its_name_says(tmp_path, name, content):
    hf_mim.MAEModel(hf_mim.MAEConfig(**TINY)).save_pretrained(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name} is not a"):
        files_to_upload(tmp_path)


def test_base_model_is_the_hub_id_a_classifier_was_loaded_from():
    from hf_mim.hub import base_model_of

    config = hf_mim.MAEConfig(**TINY)
    config.architectures, config._name_or_path = ["MAEForImageClassification"], "someone/mae-base"
    assert base_model_of(config) == "someone/mae-base"
    config._name_or_path = "../not/a/repo"
    assert base_model_of(config) is None
    config.architectures, config._name_or_path = ["MAEForPreTraining"], "someone/mae-base"
    assert base_model_of(config) is None  # a pretraining model has no base model


@pytest.mark.parametrize("model_type", sorted(SPECS_BY_MODEL_TYPE))
def test_exported_code_is_self_contained_and_its_auto_map_names_real_classes(tmp_path, model_type):
    config = _config(model_type)
    names = export_remote_code(config, tmp_path)
    auto_classes = SPECS_BY_MODEL_TYPE[model_type].auto_classes
    assert set(config.auto_map) == set(auto_classes)
    for auto_name, reference in config.auto_map.items():
        module, cls = reference.split(".")
        assert f"{module}.py" in names and cls == auto_classes[auto_name].__name__
    for name in names:
        for node in ast.walk(ast.parse((tmp_path / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert f"{node.module}.py" in names, (name, node.module)  # every relative import travels along
    assert "beit.py" not in names or model_type == "hf_mim_beit"  # only what the method needs


def _sets_trust_remote_code(source: str) -> list[int]:
    """Lines of `source` that could turn trust_remote_code on: a keyword argument, a parameter default, a dict entry
    (for **kwargs), a subscript assignment or a setdefault, with anything but a literal False."""

    def on(value) -> bool:
        return not (isinstance(value, ast.Constant) and value.value in (False, None))

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and on(node.value):
            lines.append(node.value.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            lines += [d.lineno for a, d in pairs if a.arg == "trust_remote_code" and on(d)]
        elif isinstance(node, ast.Dict):
            lines += [
                v.lineno
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and on(v)
            ]
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                key = getattr(target, "slice", None)
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and on(node.value):
                    lines.append(node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setdefault" and len(node.args) == 2:
            key, value = node.args
            if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and on(value):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize(
    "source",
    [
        "AutoModel.from_pretrained(x, trust_remote_code=True)",
        "def load(x, trust_remote_code=True):\n    pass",
        "def load(x, *, trust_remote_code=True):\n    pass",
        "AutoModel.from_pretrained(x, **{'trust_remote_code': True})",
        "kwargs = dict(a=1)\nkwargs['trust_remote_code'] = True",
        "kwargs.setdefault('trust_remote_code', True)",
        "AutoModel.from_pretrained(x, trust_remote_code=flag)",
    ],
)
def test_the_trust_remote_code_check_finds_every_way_of_turning_it_on(source):
    assert _sets_trust_remote_code(source)
    assert not _sets_trust_remote_code(
        "AutoModel.from_pretrained(x, trust_remote_code=False)\ndef f(trust_remote_code=None): 0"
    )


def test_hf_mim_never_passes_trust_remote_code_true():
    for path in Path(hf_mim.__file__).parent.rglob("*.py"):
        assert not _sets_trust_remote_code(path.read_text()), path


def test_reconstruction_grid_shows_image_masked_input_reconstruction_and_pasted_back():
    images = torch.rand(2, 3, 16, 16)
    reconstruction = torch.zeros(2, 3, 16, 16)  # black, with mean 0 and std 1 below
    masked = torch.tensor([[True, False, False, True], [False, False, False, False]])
    grid = torch.from_numpy(
        __import__("numpy").array(reconstruction_grid(images, masked, reconstruction, 8, [0, 0, 0], [1, 1, 1]))
    ).float()
    assert grid.shape == (32, 64, 3)
    original = (images.clamp(0, 1) * 255).round().permute(0, 2, 3, 1)
    assert torch.equal(grid[:16, :16], original[0]) and torch.equal(grid[16:, :16], original[1])
    assert (grid[:8, 16:24] == 127).all() and torch.equal(grid[:8, 24:32], original[0, :8, 8:16])  # masked grey
    assert (grid[:16, 32:48] == 0).all()  # the reconstruction
    assert (grid[:8, 48:56] == 0).all() and torch.equal(grid[:8, 56:64], original[0, :8, 8:16])  # pasted back
    assert torch.equal(grid[16:, 48:], original[1])  # nothing masked: all pasted


class _Oracle(hf_mim.MAEForPreTraining):
    """An MAE whose forward predicts its per-patch-normalised target exactly, with a fixed mask: what its
    `reconstruct_pixels` makes of the predictions is then known."""

    def __init__(self, config, mask):
        super().__init__(config)
        self.mask = mask

    def forward(self, pixel_values):
        from types import SimpleNamespace

        target = normalize_patches(hf_mim.patchify(pixel_values, self.config.patch_size))
        return SimpleNamespace(logits=target, mask=self.mask.float())


def test_norm_pix_reconstructions_are_denormalised_with_the_visible_patches_statistics():
    config = hf_mim.MAEConfig(**TINY, norm_pix_loss=True)
    tile = torch.randn(2, 3, 8, 8) * 0.5 + 2.0
    images = tile.repeat(1, 1, 4, 4)  # every patch alike: visible statistics are the masked patches' own
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::3] = True
    reconstruction, masked = reconstruct(_Oracle(config, mask), images)
    assert torch.equal(masked, mask)
    torch.testing.assert_close(reconstruction, images, atol=1e-5, rtol=0)
    config.norm_pix_loss = False
    assert not torch.allclose(reconstruct(_Oracle(config, mask), images)[0], images, atol=0.1)


def test_norm_pix_denormalisation_uses_only_what_the_model_saw():
    """Patches with different statistics (issue 17): a masked patch is put back with the average mean and variance
    of the visible patches, never with its own, which the model could not know."""
    from hf_mim.modeling.losses import NORM_PIX_EPS

    config = hf_mim.MAEConfig(**TINY, norm_pix_loss=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, 32, 32, generator=generator)
    images = images * torch.linspace(0.5, 3.0, 32).view(1, 1, 32, 1) + torch.linspace(-2, 2, 32).view(1, 1, 1, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, [0, 5, 15]] = True
    reconstruction, _ = reconstruct(_Oracle(config, mask), images)
    patches = hf_mim.patchify(images, 8)  # (1, 16, 192)
    visible = ~mask[0]
    mean = patches[0, visible].mean(dim=-1).mean()
    var = patches[0, visible].var(dim=-1).mean()
    expected = normalize_patches(patches) * (var + NORM_PIX_EPS).sqrt() + mean
    got = hf_mim.patchify(reconstruction, 8)
    torch.testing.assert_close(got[0, mask[0]], expected[0, mask[0]], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got[0, mask[0]], patches[0, mask[0]], atol=0.1)  # its own statistics were not used


class _Zeros(_Oracle):
    """Predicts 0 for every pixel, with a fixed mask."""

    def forward(self, pixel_values):
        from types import SimpleNamespace

        patches = hf_mim.patchify(pixel_values, self.config.patch_size)
        return SimpleNamespace(logits=torch.zeros_like(patches), mask=self.mask.float())


def test_reconstruction_error_is_masked_pixel_mse_over_pixel_variance():
    config = hf_mim.MAEConfig(**{**TINY, "image_size": 8, "patch_size": 4}, norm_pix_loss=False)
    images = torch.zeros(1, 3, 8, 8)
    images[..., :4, :4] = 1.0  # patch 0
    images[..., 4:, 4:] = 3.0  # patch 3
    mask = torch.tensor([[True, False, False, True]])  # patches 0 and 3 hidden, predicted as 0
    error = reconstruction_error(_Zeros(config, mask), images)
    # masked pixels: 48 of 1 and 48 of 3, so MSE (1 + 9) / 2 = 5; pixels: mean 1, unbiased variance 288 / 191
    assert error["masked_mse"] == pytest.approx(5.0)
    assert error["pixel_variance"] == pytest.approx(288 / 191)
    assert error["ratio"] == pytest.approx(5.0 * 191 / 288) and error["images"] == 1
    # the visible patches do not count: predicting them wrongly changes nothing
    images[..., :4, 4:] = 7.0
    assert reconstruction_error(_Zeros(config, mask), images)["masked_mse"] == pytest.approx(5.0)


def test_each_method_writes_its_picture_or_none(tmp_path):
    pixels = torch.randn(2, 3, 32, 32)
    mae = hf_mim.MAEForPreTraining(hf_mim.MAEConfig(**TINY, decoder_hidden_size=32, decoder_num_hidden_layers=1))
    adios = hf_mim.ADIOSForPreTraining(hf_mim.ADIOSConfig(**TINY, num_masks=3, occlusion_base_channels=8))
    cmae = hf_mim.CMAEForPreTraining(hf_mim.CMAEConfig(**TINY))
    assert save_method_pictures(mae, pixels, tmp_path) == ["reconstruction.png"]
    assert save_method_pictures(adios, pixels, tmp_path) == ["masks.png"]
    assert save_method_pictures(cmae, pixels, tmp_path) == []
    assert Image.open(tmp_path / "reconstruction.png").size == (4 * 32 * 4, 2 * 32 * 4)
    save_loss_curve([[1, 3.0], [2, 2.0]], tmp_path / "loss.png")
    assert Image.open(tmp_path / "loss.png").size == (600, 350)
    with pytest.raises(ValueError, match="loss_history is empty"):
        save_loss_curve([], tmp_path / "empty.png")
    card = model_card_for_folder(_saved(mae, tmp_path))
    # the card shows the picture of its own method only, though ADIOS's lies in the same folder
    assert "![Reconstructions](reconstruction.png)" in card.text and "masks.png" not in card.text


def _saved(model, folder):
    model.save_pretrained(folder)
    return folder


class RenamedMAEConfig(hf_mim.MAEConfig):
    # no __init__ of its own: transformers 5 would give it a generated dataclass one that never calls MAEConfig's
    model_type = "renamed_mae"


class RenamedMAE(hf_mim.MAEForPreTraining):
    config_class = RenamedMAEConfig


def test_a_config_subclass_without_init_keeps_its_parents_fields(tmp_path):
    config = RenamedMAEConfig(**TINY, decoder_hidden_size=16, decoder_num_attention_heads=2, mask_ratio=0.5)
    assert (config.hidden_size, config.decoder_hidden_size, config.mask_ratio, config.norm_pix_loss) == (
        32,
        16,
        0.5,
        True,
    )
    config.save_pretrained(tmp_path)
    assert RenamedMAEConfig.from_pretrained(tmp_path).to_diff_dict() == config.to_diff_dict()


def test_a_model_of_an_unregistered_method_saves_with_a_generic_card(tmp_path):
    model = RenamedMAE(RenamedMAEConfig(**TINY, decoder_hidden_size=16, decoder_num_attention_heads=2))
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "RenamedMAE encoder" in card and "`renamed_mae`, which no hf_mim method describes" in card
    validate_model_card(card)
    assert (tmp_path / "model.safetensors").is_file()


def test_every_registered_method_has_a_complete_spec():
    from hf_mim.modeling.auto import METHOD_SPECS

    assert {"mae", "simmim", "beit", "visual-tokenizer", "cmae", "rmae", "adios"} <= set(METHOD_SPECS)
    for name, spec in METHOD_SPECS.items():
        config = spec.config_class(**spec.tiny_config)
        assert spec.card.target(config) and spec.card.bibtex.startswith("@"), name
        if spec.sample_inputs is not None:  # the per-sample inputs are seeded: one generator, one draw
            grid = (config.image_size // config.patch_size,) * 2
            first = spec.sample_inputs(config, grid, torch.Generator().manual_seed(3))
            again = spec.sample_inputs(config, grid, torch.Generator().manual_seed(3))
            assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first), name


@pytest.mark.parametrize(
    ("image_size", "crop", "epochs"),
    [(28, "scale=(0.8, 1)", "num_train_epochs=20"), (224, "scale=(0.08, 1)", "num_train_epochs=50")],
)
def test_the_finetuning_snippet_is_the_recipe_hf_mim_evaluate_picks_for_the_image_size(image_size, crop, epochs):
    """Issue 28: the card's Trainer snippet used ImageNet's settings for every model; a colleague with only
    transformers fine-tunes a 28 px model with the small-image recipe that `hf-mim evaluate` measured."""
    from hf_mim.evaluation.recipes import choose_recipe

    config = _config("hf_mim_mae")
    config.image_size = image_size
    config.patch_size = 4 if image_size < 64 else 16
    text = build_model_card(config).text
    snippet = text[text.index("Fine-tune for image classification") :]
    recipe, _ = choose_recipe("auto", image_size)
    assert crop in snippet and epochs in snippet and f"{recipe.name} recipe for {image_size} px images" in snippet
    assert f"learning_rate={recipe.finetune_lr * 64 / 256:g}" in snippet
