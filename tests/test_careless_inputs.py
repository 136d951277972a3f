"""Issue 32: careless and hostile inputs beyond issue 17's. Nothing of a user's is lost, no folder's code runs, no
input trains or reports silently wrong, and each mistake is one line, not a traceback.

Each test failed on the code before the issue. The full-disk tests write on a real, small tmpfs (mounting one needs
root, as CI has); `benchmarks/careless_inputs.py --issue 32` runs every case through the command line, before and
after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hf_mim
from hf_mim.cli import main as cli_main
from hf_mim.convert import ConversionError, convert_checkpoint
from hf_mim.data.images import ImageAugmentation, open_image, to_channels
from hf_mim.data.labelled import load_labelled_splits
from hf_mim.data.sources import DatasetError, load_pretraining_dataset
from hf_mim.evaluation.runner import EvaluateArguments, _settings, evaluate_models
from hf_mim.evaluation.runner import validate as validate_evaluation
from hf_mim.evaluation.visualize import image_files, visualize
from hf_mim.hub import check_repo_id, files_to_upload, push_folder
from hf_mim.loading import CheckpointError, load_checked
from hf_mim.modeling.auto import METHOD_SPECS
from hf_mim.training.arguments import validate
from hf_mim.training.run_folder import PREVIOUS_ARGS, RunFolderError
from hf_mim.training.trainer import TrainingError, pretrain

from .hub_server import HubServer
from .tiny_runs import tiny_args

ROOT = Path(__file__).resolve().parents[1]
# the benchmark's own USER folder (it runs against older checkouts too, so it cannot import from tests/)
sys.path.insert(0, str(ROOT / "benchmarks"))
from careless_inputs import USER_FILES, unchanged, user_folder  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny MAE run (a checkpoint at step 2); tests take copies."""
    root = tmp_path_factory.mktemp("trained")
    pretrain(tiny_args(root, max_steps=2, checkpointing_steps=2))
    return root / "run"


def copy_of(trained: Path, dst: Path, checkpoints: bool = False) -> Path:
    ignore = None if checkpoints else shutil.ignore_patterns("checkpoints", ".hf_mim.lock")
    shutil.copytree(trained, dst, ignore=ignore)
    return dst


def with_remote_code(folder: Path, marker: Path) -> Path:
    """`folder`'s config.json pointed at code in the folder, of a model type only that code defines."""
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilConfig"}, model_type="evil")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def command(*args, env=None, stdin=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hf_mim", *args],
        capture_output=True,
        text=True,
        env=environment,
        input=stdin,
        cwd=cwd,
        timeout=timeout,
    )


def one_line_error(run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("hf-mim ")]
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(lines) == 1, run.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# Security
# ---------------------------------------------------------------------------------------------------------------


def test_a_folders_code_never_runs_even_when_yes_reaches_stdin(trained, tmp_path):
    marker = tmp_path / "RAN"
    folder = with_remote_code(copy_of(trained, tmp_path / "remote"), marker)
    for args in (
        ["evaluate", "--model", str(folder), "--protocol", "knn", "--no-save-to-model"],
        ["visualize", "--model", str(folder), "--output-dir", str(tmp_path / "pictures")],
    ):
        run = command(*args, stdin="y\n" * 20)
        assert not marker.exists(), args[0]
        assert "custom code" in one_line_error(run)


def test_loaders_refuse_a_folder_of_another_model_type(trained, tmp_path):
    folder = with_remote_code(copy_of(trained, tmp_path / "remote"), tmp_path / "RAN")
    with pytest.raises(CheckpointError, match="'evil'"):
        load_checked(hf_mim.MAEForPreTraining, folder)
    assert not (tmp_path / "RAN").exists()


def test_push_uploads_what_hf_mim_wrote_and_what_is_named_only(trained, tmp_path):
    folder = copy_of(trained, tmp_path / "m")
    Image.new("RGB", (8, 8), "white").save(folder / "id_card_scan.png")
    uploaded, left_out = files_to_upload(folder)
    assert "id_card_scan.png" in left_out and "id_card_scan.png" not in uploaded
    assert {"model.safetensors", "config.json", "loss_curve.png", "reconstruction.png"} <= set(uploaded)
    assert "id_card_scan.png" in files_to_upload(folder, include=["id_card_scan.png"])[0]
    with pytest.raises(ValueError, match="--include"):
        files_to_upload(folder, include=["../elsewhere.png"])


def test_a_file_that_only_starts_like_a_png_is_never_uploaded(trained, tmp_path):
    folder = copy_of(trained, tmp_path / "m")
    (folder / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1 << 16))
    with pytest.raises(ValueError, match="loss_curve.png is not a PNG image"):
        files_to_upload(folder)


def test_weights_that_do_not_fit_config_json_are_not_pushed(trained, tmp_path):
    folder = copy_of(trained, tmp_path / "misfit")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2}))
    # refused before any request: there is no server here
    with pytest.raises(ValueError, match="do not fit|not in the weights"):
        push_folder(folder, "tester/misfit", token="x")


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


def push_command(hub, folder, repo_id, *extra, stdin=None, cwd=None):
    env = {"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_ENDPOINT": hub.url, "HF_TOKEN": "test-token"}
    return command("push", str(folder), repo_id, *extra, env=env, stdin=stdin, cwd=cwd)


def test_push_runs_no_code_names_a_missing_branch_and_refuses_an_empty_folder_name(hub, trained, tmp_path):
    marker = tmp_path / "RAN"
    folder = with_remote_code(copy_of(trained, tmp_path / "remote"), marker)
    run = push_command(hub, folder, "tester/remote", stdin="y\n" * 20)
    assert not marker.exists() and "custom code" in one_line_error(run)
    with pytest.raises(KeyError):
        hub.files("tester/remote")

    run = push_command(hub, copy_of(trained, tmp_path / "branch"), "tester/branch", "--revision", "no-such-branch")
    assert "'no-such-branch'" in one_line_error(run)

    # an unset shell variable: "" must not push the current folder
    run = push_command(hub, "", "tester/empty", cwd=copy_of(trained, tmp_path / "cwd"))
    assert "OUTPUT_DIR is empty" in one_line_error(run)
    with pytest.raises(KeyError):
        hub.files("tester/empty")


def test_an_unreachable_hub_is_one_line(trained, tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "x", "HF_HUB_DISABLE_XET": "1"}
    run = command("push", str(copy_of(trained, tmp_path / "m")), "tester/x", env=env)
    assert "cannot reach the Hub at http://127.0.0.1:9" in one_line_error(run)


# ---------------------------------------------------------------------------------------------------------------
# Data lost
# ---------------------------------------------------------------------------------------------------------------


def test_a_resume_never_writes_into_someone_elses_folder(trained, tmp_path):
    mine = user_folder(tmp_path / "mine")
    for checkpoint in ("latest", str(trained / "checkpoints" / "step-2")):
        with pytest.raises(RunFolderError, match="holds files no hf-mim run wrote"):
            pretrain(tiny_args(tmp_path, output_dir=str(mine), max_steps=3, resume_from_checkpoint=checkpoint))
        assert unchanged(mine) and sorted(p.name for p in mine.iterdir()) == sorted(USER_FILES)


def load_example():
    spec = importlib.util.spec_from_file_location("run_pretraining", ROOT / "examples" / "run_pretraining.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


EXAMPLE_TINY = [
    *("--model_size", "tiny", "--image_size", "16", "--patch_size", "4", "--max_steps", "2"),
    *("--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--report_to", "none"),
]


def example_error(capsys, *argv) -> str:
    """The example script's exit status 2 and its one line."""
    status = load_example().run(list(argv))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run_pretraining.py: error:")]
    assert status == 2 and len(lines) == 1
    return lines[0]


def test_the_example_script_makes_user_errors_one_line_and_never_writes_into_a_users_folder(trained, tmp_path, capsys):
    mine = user_folder(tmp_path / "mine")
    out = str(tmp_path / "out")
    resume = ["--resume_from_checkpoint", str(trained / "checkpoints" / "step-2")]
    assert "holds files no hf-mim run wrote" in example_error(capsys, "--output_dir", str(mine), *EXAMPLE_TINY, *resume)
    assert unchanged(mine)
    assert "--config_overrides" in example_error(capsys, "--output_dir", out, *EXAMPLE_TINY, "--config_overrides", "x")
    assert "--max_ste" in example_error(capsys, "--output_dir", out, *EXAMPLE_TINY, "--max_ste", "3")
    latest = example_error(capsys, "--output_dir", out, *EXAMPLE_TINY, "--resume_from_checkpoint", "latest")
    assert "no checkpoint" in latest
    persistent = ("--dataloader_persistent_workers", "True")
    assert "persistent" in example_error(capsys, "--output_dir", out, *EXAMPLE_TINY, *persistent)
    marker = tmp_path / "RAN"
    remote = with_remote_code(copy_of(trained, tmp_path / "remote"), marker)
    # without --model_size, which a starting checkpoint refuses before it is read (the encoder is the checkpoint's)
    assert EXAMPLE_TINY[:2] == ["--model_size", "tiny"]
    start = [*EXAMPLE_TINY[2:], "--model_name_or_path", str(remote)]
    assert "'evil'" in example_error(capsys, "--output_dir", out, *start)
    assert not marker.exists()


def test_a_folder_of_copied_checkpoints_only_is_a_runs_folder(tmp_path):
    from hf_mim.training.run_folder import check_output_dir

    (tmp_path / "copied" / "checkpoints" / "step-2").mkdir(parents=True)  # hf-mim pretrain's, copied to resume
    (tmp_path / "trainer" / "checkpoint-2").mkdir(parents=True)  # Trainer's
    (tmp_path / "trainer" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    for folder in ("copied", "trainer"):
        check_output_dir(tmp_path / folder, overwrite=False)
    (tmp_path / "notes" / "checkpoints").mkdir(parents=True)
    (tmp_path / "notes" / "checkpoints" / "my_notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="checkpoints"):
        check_output_dir(tmp_path / "notes", overwrite=False)


def test_a_failed_rerun_keeps_the_previous_model_and_its_records(trained, tmp_path):
    folder = copy_of(trained, tmp_path / "m")
    before = snapshot(folder)
    with pytest.raises(TrainingError, match="non-finite|not finite"):
        pretrain(tiny_args(tmp_path, output_dir=str(folder), max_steps=8, lr=1e30, max_non_finite_steps=2))
    assert snapshot(folder) == before
    assert not (folder / PREVIOUS_ARGS).exists()


def test_a_run_that_fails_before_it_starts_leaves_the_folders_records_alone(trained, tmp_path):
    """Only what a run set aside is put back: a run that fails while loading its data must not restore a
    `.hf_mim.previous-args.json` an earlier failed run left (the folder would then record the wrong run, and
    `--resume-from-checkpoint latest` would miss the checkpoints of the one it holds)."""
    folder = copy_of(trained, tmp_path / "m")
    (folder / PREVIOUS_ARGS).write_text('{"run_id": "older"}')
    before = (folder / "training_args.json").read_text()
    with pytest.raises(DatasetError):
        pretrain(tiny_args(tmp_path, output_dir=str(folder), dataset=str(tmp_path / "no_such_data")))
    assert (folder / "training_args.json").read_text() == before


def test_push_to_hub_of_a_reloaded_run_carries_its_pictures_not_a_stray_one(trained, tmp_path):
    from hf_mim.hub import carry_run_records

    source = copy_of(trained, tmp_path / "m")
    Image.new("RGB", (8, 8)).save(source / "id_card_scan.png")
    model = hf_mim.MAEForPreTraining.from_pretrained(source)
    model.save_pretrained(tmp_path / "saved")
    carried = carry_run_records(source, tmp_path / "saved")
    assert "loss_curve.png" in carried and "id_card_scan.png" not in carried
    assert not (tmp_path / "saved" / "id_card_scan.png").exists()


def test_a_rerun_replaces_only_what_hf_mim_wrote(trained, tmp_path):
    folder = copy_of(trained, tmp_path / "m")
    mine = {"train.py": "print('mine')", "my_plot.png": "my plot", "README.md": "# my own card"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    (folder / "eval_results.json").write_text('{"results": []}')  # describes the previous weights
    before = (folder / "model.safetensors").read_bytes()
    pretrain(tiny_args(tmp_path, output_dir=str(folder), max_steps=1, seed=7))
    assert unchanged(folder, mine)
    assert (folder / "model.safetensors").read_bytes() != before
    assert not (folder / "eval_results.json").exists() and not (folder / PREVIOUS_ARGS).exists()


def test_overwrite_never_deletes_a_datasets_own_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(16):
        Image.new("RGB", (16, 16), (i * 10, 0, 0)).save(data / f"{i}.png")
    (data / "prepare.py").write_text("print('mine')")
    before = snapshot(data)
    for out in (data, data / "run"):
        with pytest.raises(RunFolderError, match="inside --dataset"):
            pretrain(tiny_args(tmp_path, output_dir=str(out), dataset=str(data), overwrite_output_dir=True))
    assert snapshot(data) == before and not (data / "run").exists()


def test_convert_never_replaces_another_model(trained, tmp_path):
    from safetensors.torch import load_file

    state = {k.removeprefix("vit."): v for k, v in load_file(trained / "model.safetensors").items()}
    torch.save({"model": state}, tmp_path / "official.pth")
    other = copy_of(trained, tmp_path / "other")
    before = snapshot(other)
    with pytest.raises(ConversionError, match="already holds a model"):
        convert_checkpoint(tmp_path / "official.pth", other, num_attention_heads=2)
    assert snapshot(other) == before


def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    return path


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    _tmpfs(path, size)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


# about 1.4 M parameters: 5.6 MB of fp32 weights, more than the 2 MB disk holds
WIDE = dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=2, intermediate_size=768)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["final-save", "checkpoint"])
def test_a_real_full_disk_is_one_line_and_leaves_no_partial_files(tmp_path, checkpointing):
    with small_disk(tmp_path / "disk", "2m") as disk:
        args = tiny_args(
            tmp_path,
            output_dir=str(disk / "run"),
            max_steps=2,
            checkpointing_steps=1 if checkpointing else None,
            config_overrides={**tiny_args(tmp_path).config_overrides, **WIDE},
        )
        with pytest.raises(TrainingError) as caught:
            pretrain(args)
        assert "no space" in str(caught.value).lower() or "space left" in str(caught.value).lower()
        assert len(str(caught.value).splitlines()) == 1
        assert not list((disk / "run").glob(".tmp-*")) and not list((disk / "run").glob("checkpoints/.tmp-*"))


# ---------------------------------------------------------------------------------------------------------------
# Tracebacks that are now one line, or a correct result
# ---------------------------------------------------------------------------------------------------------------


def _images(n=16):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(n)]
    return images, Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()}))


@pytest.mark.parametrize("kind", ["parquet", "arrow", "tar", "tar-streamed"])
def test_a_damaged_shard_is_named_and_skipped(tmp_path, kind):
    images, data = _images()
    folder = tmp_path / "shards"
    folder.mkdir()
    if kind == "parquet":
        data.to_parquet(str(folder / "a.parquet"))
        raw = (folder / "a.parquet").read_bytes()
        (folder / "b.parquet").write_bytes(raw[: len(raw) // 2] + raw[-8:])
    elif kind == "arrow":
        data.save_to_disk(str(tmp_path / "saved"))
        raw = next((tmp_path / "saved").glob("*.arrow")).read_bytes()
        (folder / "a.arrow").write_bytes(raw)
        (folder / "b.arrow").write_bytes(raw[:400] + b"\0" * 64 + raw[464:600])
    else:
        for shard in ("a", "b"):
            with tarfile.open(folder / f"{shard}.tar", "w") as tar:
                for i, image in enumerate(images):
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    info = tarfile.TarInfo(f"{shard}{i:04d}.png")
                    info.size = len(buffer.getvalue())
                    tar.addfile(info, io.BytesIO(buffer.getvalue()))
        raw = (folder / "b.tar").read_bytes()
        (folder / "b.tar").write_bytes(raw[: len(raw) // 2 + 77])
    streaming = kind == "tar-streamed"
    dataset, description = load_pretraining_dataset(str(folder), streaming=streaming)
    assert "1 damaged, skipped: b." in description
    rows = list(dataset) if streaming else [dataset[i] for i in range(len(dataset))]
    assert len(rows) == 16


def test_a_named_pipe_among_the_images_is_never_opened(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "b.png")
    assert image_files([str(tmp_path)]) == [tmp_path / "a.png"]
    with pytest.raises(ValueError, match="not a regular file"):
        image_files([str(tmp_path / "b.png")])


def _labelled(tmp_path, labels):
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    images = [Image.new("RGB", (8, 8), (i * 7 % 256, 0, 0)) for i in range(len(labels))]
    label = Value("int64") if None in labels else ClassLabel(num_classes=2)
    features = Features({"image": ImageFeature(), "label": label})
    path = tmp_path / "labelled"
    Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(path))
    return str(path)


def test_labels_with_none_and_a_single_class_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="10 of 40 rows without a label"):
        load_labelled_splits(_labelled(tmp_path / "none", [0, 1, None, 1] * 10))
    with pytest.raises(DatasetError, match="holds 1 class"):
        load_labelled_splits(_labelled(tmp_path / "one", [0] * 40))


def test_a_bad_eval_results_json_is_refused_before_anything_is_evaluated(trained, tmp_path, monkeypatch):
    folder = copy_of(trained, tmp_path / "m")
    (folder / "eval_results.json").write_text("[]")
    import hf_mim.data.labelled as evaluation_data

    def never(*args, **kwargs):
        raise AssertionError("the data was loaded: the check came after the evaluation")

    monkeypatch.setattr(evaluation_data, "load_labelled_splits", never)
    with pytest.raises(ValueError, match="eval_results.json holds a JSON list"):
        evaluate_models(EvaluateArguments(model=[str(folder)], protocol=["knn"]))


def test_evaluation_settings_are_checked_and_recorded():
    for field, value in (("drop_path", 2.0), ("label_smoothing", 5.0), ("finetune_lr", float("nan"))):
        with pytest.raises(ValueError, match=field.replace("_", "-")):
            validate_evaluation(EvaluateArguments(model=["m"], **{field: value}))
    # the fine-tuning settings as `finetune_settings` fills them in from a recipe (the paper's here)
    recipe = dict(finetune_epochs=50, finetune_lr=1e-3, weight_decay=0.05, layer_decay=1.0, label_smoothing=0.1)
    default = EvaluateArguments(model=["m"], crop_scale=[0.08, 1.0], **recipe)
    changed = replace(default, finetune_lr=5e-3, label_smoothing=0.0, drop_path=0.2)
    assert _settings(default, "finetune", "cls") != _settings(changed, "finetune", "cls")
    assert "lr 0.005" in _settings(changed, "finetune", "cls") and "label smoothing 0" in _settings(
        changed, "finetune", "cls"
    )
    assert _settings(default, "linear", "cls") != _settings(
        EvaluateArguments(model=["m"], linear_lr=1.0), "linear", "cls"
    )


# ---------------------------------------------------------------------------------------------------------------
# Silently wrong
# ---------------------------------------------------------------------------------------------------------------


def test_beit_refuses_a_folder_that_is_no_tokenizer(trained, tmp_path):
    with pytest.raises(ValueError, match="model_type='hf_mim_mae'"):
        pretrain(tiny_args(tmp_path, method="beit", tokenizer=str(trained), config_overrides={}))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_tokenizer_missing_tensors_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from hf_mim.modeling.beit import load_tokenizer

    spec = METHOD_SPECS["visual-tokenizer"]
    spec.pretraining_class(spec.config_class(**spec.tiny_config)).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({k: v for i, (k, v) in enumerate(sorted(state.items())) if i % 2}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not in its weights"):
        load_tokenizer(str(tmp_path))


def test_config_values_of_the_wrong_type_are_refused_for_every_method():
    for spec in METHOD_SPECS.values():
        with pytest.raises(ValueError, match="patch_size"):
            spec.config_class(**{**spec.tiny_config, "patch_size": "8"})
        if "norm_pix_loss" in spec.config_class().to_dict():
            with pytest.raises(ValueError, match="norm_pix_loss='false' is invalid: a bool"):
                spec.config_class(**{**spec.tiny_config, "norm_pix_loss": "false"})
        spec.config_class(**spec.tiny_config)  # the defaults themselves pass


@pytest.mark.parametrize(
    "argv",
    [
        ["pretrain", "--dataset", ""],
        ["pretrain", "--output-dir", ""],
        ["pretrain", "--resume-from-checkpoint", ""],
        ["pretrain", "--config", " "],
        ["pretrain", "--method", "beit", "--tokenizer", ""],
        ["push", "", "tester/repo"],
        ["evaluate", "--model", "m", ""],
    ],
)
def test_empty_strings_are_refused_before_anything_runs(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    assert "is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_empty_strings_are_refused_from_python_too(tmp_path):
    for field in ("dataset", "output_dir", "resume_from_checkpoint", "config", "tokenizer"):
        with pytest.raises(ValueError, match=field.replace("_", "-")):
            validate(tiny_args(tmp_path, **{field: ""}))


def test_a_float_image_with_a_nan_pixel_is_a_bad_image_not_a_black_one():
    pixels = np.full((8, 8), 0.5, dtype=np.float32)
    pixels[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        to_channels(Image.fromarray(pixels, mode="F"), 3)


@pytest.mark.parametrize("channels", [2, 13])
def test_channel_counts_without_a_defined_conversion_are_refused(channels):
    config = hf_mim.MAEConfig(**{**METHOD_SPECS["mae"].tiny_config, "num_channels": channels})
    with pytest.raises(ValueError, match=f"num_channels={channels} is invalid"):
        ImageAugmentation.from_config(config)


def test_visualize_refuses_scale_0(trained, tmp_path):
    with pytest.raises(ValueError, match="--scale 0"):
        visualize(str(trained), tmp_path / "out", scale=0)
    assert not (tmp_path / "out").exists()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a few bytes of data: what a bomb looks like to a loader."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_images_declaring_huge_sizes_are_refused_before_decoding():
    with pytest.raises(Image.DecompressionBombError, match="(?i)decompression bomb"):
        open_image(_png_declaring(15000, 15000))  # Pillow's own guard, at its default again
    with pytest.raises(Image.DecompressionBombError, match="12000x12000"):
        open_image(_png_declaring(12000, 12000))  # where Pillow only warns, and would decode 144 M pixels
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own setting is left to the user's code as it was


def test_a_repo_id_with_a_trailing_newline_is_refused():
    with pytest.raises(ValueError, match="tester/name"):
        check_repo_id("tester/name\n")
