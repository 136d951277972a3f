"""Issue 17: nothing lost, nothing leaked, no planted code run, under careless and hostile use of `hf-mim pretrain`.

Each test here failed on the code before the issue: a folder of someone else's files overwritten, another run's
checkpoints deleted or resumed, two runs racing on one folder, a checkpoint payload run on resume, a final save that
half-wrote, values that trained silently wrong, and tracebacks where one line belonged.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from hf_mim.training.checkpoints import MANIFEST, _digest
from hf_mim.training.run_folder import LOCK_FILE, RunFolderError, move_into_place
from hf_mim.training.trainer import TrainingError, pretrain

from .launch import hf_mim_command
from .tiny_runs import METHOD_MODELS, TINY_MODEL, tiny_args


class _Payload:
    """Unpickling this runs a shell command: what a planted checkpoint file would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_cli(args, timeout=300):
    return hf_mim_command("pretrain", args, timeout=timeout)


def one_line_error(run) -> str:
    """The command failed as a user error: exit 2, one line on stderr, no traceback."""
    lines = [line for line in run.stderr.splitlines() if line.startswith("hf-mim ")]
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(lines) == 1, run.stderr[-3000:]
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# Security: checkpoints hold nothing that is unpickled unsafely
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A C-MAE run (weights, optimizer, RNG states, schedulers and an EMA teacher) checkpointed at step 2."""
    root = tmp_path_factory.mktemp("planted")
    args = tiny_args(
        root, method="cmae", max_steps=2, checkpointing_steps=2, config_overrides=dict(METHOD_MODELS["cmae"])
    )
    pretrain(args)
    return root, args


def test_a_checkpoint_holds_no_pickled_objects_of_hf_mim(checkpoint):
    root, _ = checkpoint
    files = sorted(p.name for p in (root / "run" / "checkpoints" / "step-2").iterdir())
    assert not [name for name in files if name.startswith("custom_checkpoint")], files
    assert {"hf_mim_state.json", "hf_mim_state.safetensors", "model.safetensors"} <= set(files)


def test_a_payload_planted_in_any_checkpoint_file_never_runs(checkpoint, tmp_path):
    """Each file of a checkpoint in turn is replaced by a pickle whose loading would run a command, and the manifest
    is rewritten to match, so that only the loaders stand between the payload and the resume."""
    root, args = checkpoint
    source = root / "run" / "checkpoints" / "step-2"
    names = sorted(p.name for p in source.iterdir() if p.name != MANIFEST)
    assert len(names) >= 6
    for name in names:
        case = tmp_path / name / "checkpoints" / "step-2"
        shutil.copytree(source, case)
        marker = tmp_path / f"ran-{name}"
        torch.save({"state": _Payload(marker)}, case / name)
        manifest = json.loads((case / MANIFEST).read_text())
        manifest[name] = {"size": (case / name).stat().st_size, "sha256": _digest(case / name)}
        (case / MANIFEST).write_text(json.dumps(manifest))
        resumed = tiny_args(
            tmp_path / name,
            method=args.method,
            max_steps=3,
            config_overrides=args.config_overrides,
            output_dir=str(tmp_path / name),
            resume_from_checkpoint=str(case),
        )
        with pytest.raises((ValueError, TrainingError)):
            pretrain(resumed)
        assert not marker.exists(), f"a payload planted in {name} ran"


def test_a_tampered_file_fails_the_manifest_and_latest_falls_back(checkpoint, tmp_path):
    root, args = checkpoint
    folder = tmp_path / "run"
    shutil.copytree(root / "run", folder)
    shutil.copytree(folder / "checkpoints" / "step-2", folder / "checkpoints" / "step-3")
    state = json.loads((folder / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    state["step"] = 3
    (folder / "checkpoints" / "step-3" / "trainer_state.json").write_text(json.dumps(state, indent=2))  # same size
    from hf_mim.training.checkpoints import checkpoint_problem, resolve_resume

    assert "SHA-256" in checkpoint_problem(folder / "checkpoints" / "step-3")
    assert resolve_resume(folder, "latest", state["run_id"]) == folder / "checkpoints" / "step-2"


# ----------------------------------------------------------------------------------------------------------------
# Data lost: output folders, checkpoints, locks, the final save
# ----------------------------------------------------------------------------------------------------------------


def test_a_folder_of_someone_elses_files_is_refused_unless_overwrite_is_asked(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}')
    (folder / "notes.txt").write_text("do not lose me")
    run = run_cli(["--output-dir", str(folder), "--max-steps", "1", "--num-workers", "0", "--batch-size", "8"])
    assert "holds files no hf-mim run wrote (config.json, notes.txt)" in one_line_error(run)
    assert (folder / "config.json").read_text() == '{"mine": true}' and len(list(folder.iterdir())) == 2
    pretrain(tiny_args(tmp_path, output_dir=str(folder), max_steps=1, overwrite_output_dir=True))
    assert (folder / "notes.txt").read_text() == "do not lose me"  # overwritten only where the model goes
    assert json.loads((folder / "config.json").read_text())["model_type"] == "hf_mim_mae"


def test_a_rerun_into_its_own_folder_rewrites_every_record(tmp_path):
    pretrain(tiny_args(tmp_path, max_steps=1))
    folder = tmp_path / "run"
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**processor, "image_mean": [0.0, 0.0, 0.0]}))
    (folder / "eval_results.json").write_text('{"results": [{"protocol": "knn", "value": 0.99}]}')
    Image.new("RGB", (2, 2)).save(folder / "tokens.png")  # a picture of another method's earlier run
    pretrain(tiny_args(tmp_path, max_steps=1, image_size=32, config_overrides={**TINY_MODEL}))
    assert json.loads((folder / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}
    assert json.loads((folder / "preprocessor_config.json").read_text())["image_mean"] != [0.0, 0.0, 0.0]
    assert not (folder / "eval_results.json").exists() and not (folder / "tokens.png").exists()
    assert json.loads((folder / "config.json").read_text())["image_size"] == 32


def test_checkpoint_limit_and_latest_never_touch_another_runs_checkpoints(tmp_path):
    first = pretrain(tiny_args(tmp_path, max_steps=4, checkpointing_steps=2))
    folder = tmp_path / "run"
    theirs = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert theirs == ["step-2", "step-4"] and first["steps"] == 4
    # a new run into the same folder: its limit keeps 1 of its own, and leaves the first run's alone
    pretrain(tiny_args(tmp_path, max_steps=3, checkpointing_steps=1, checkpoints_total_limit=1, seed=1))
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == ["step-2", "step-3", "step-4"], names  # B's own step 2 went to step-2.<run id>, then was pruned
    run_of = {n: json.loads((folder / "checkpoints" / n / "trainer_state.json").read_text())["run_id"] for n in names}
    assert run_of["step-2"] == run_of["step-4"] != run_of["step-3"]
    # latest is this folder's current run's newest checkpoint (step 3), not the first run's step 4
    resumed = pretrain(tiny_args(tmp_path, max_steps=3, seed=1, resume_from_checkpoint="latest"))
    assert resumed["resumed_from"].endswith("step-3")


def test_a_second_run_on_a_locked_folder_refuses_and_a_dead_runs_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "run_id": "other"}))
    with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()} on"):
        pretrain(tiny_args(tmp_path, max_steps=1))
    assert lock.exists() and not (folder / "training_args.json").exists()  # nothing written
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": os.uname().nodename, "run_id": "dead"}))
    summary = pretrain(tiny_args(tmp_path, max_steps=1))
    assert summary["steps"] == 1 and not lock.exists()  # taken over, then released


def test_a_full_disk_at_the_final_save_names_the_disk_and_leaves_no_finished_looking_folder(tmp_path, monkeypatch):
    from hf_mim.modeling.base import MIMPreTrainedModel

    def full(self, folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(MIMPreTrainedModel, "save_pretrained", full)
    with pytest.raises(
        TrainingError, match=r"no space left on the disk of .* [kMG]B free, about .* [kMG]B needed\); the last "
    ):
        pretrain(tiny_args(tmp_path, max_steps=2, checkpointing_steps=1))
    folder = tmp_path / "run"
    assert not (folder / "training_summary.json").exists() and not (folder / "model.safetensors").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]  # the staging folder is gone
    assert (folder / "checkpoints" / "step-2").is_dir()


def test_the_final_files_move_in_with_the_records_last(tmp_path, monkeypatch):
    staging, folder = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    folder.mkdir()
    for name in ("training_summary.json", "README.md", "model.safetensors", "config.json", "loss_curve.png"):
        (staging / name).write_text(name)
    moved = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: moved.append(os.path.basename(a)) or real(a, b))
    move_into_place(staging, folder)
    assert moved[-2:] == ["README.md", "training_summary.json"] and "model.safetensors" in moved[:3]
    assert not staging.exists()


def test_non_finite_weights_are_not_saved(tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step

    def poisoned(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    with pytest.raises(TrainingError, match="the trained weights are not finite"):
        pretrain(tiny_args(tmp_path, max_steps=2))
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ----------------------------------------------------------------------------------------------------------------
# Silently wrong, and tracebacks: one line each
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "inf"], "--lr=inf is invalid: a positive, finite float"),
        (["--weight-decay", "nan"], "--weight-decay=nan is invalid"),
        (["--weight-decay", "-0.1"], "--weight-decay=-0.1 is invalid: a finite float, 0 or more"),
        (["--warmup-steps", "5"], "--warmup-steps=5 is invalid: fewer than --max-steps=2"),
        (["--mixed-precision", "fp16"], "--mixed-precision='fp16' is invalid on a CPU"),
    ],
)
def test_values_that_would_train_silently_wrong_are_refused(tmp_path, flags, message):
    run = run_cli(["--output-dir", str(tmp_path / "out"), "--max-steps", "2", "--num-workers", "0", *flags])
    assert message in one_line_error(run)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_dataset_of_which_nothing_decodes_does_not_train(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(4):
        (folder / f"broken{i}.png").write_bytes(b"not an image at all")
    with pytest.raises(TrainingError, match="no image of .* could be decoded"):
        pretrain(tiny_args(tmp_path, dataset=str(folder), batch_size=2, max_steps=None, epochs=2))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_an_output_dir_that_is_a_file_or_unwritable_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(run_cli(["--output-dir", str(tmp_path / "file"), "--max-steps", "1"]))
    assert (tmp_path / "file").read_text() == "x"
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(RunFolderError, match="Permission denied"):
        pretrain(tiny_args(tmp_path, output_dir=str(tmp_path / "ro")))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "holds a JSON list; allowed: an object of config fields"),
        ('{"image_size": 32.5}', "image_size=32.5 is invalid: an int or a pair"),
        ('{"hidden_size": 100000000}', "is invalid: an encoder of at most"),
        ("{not json", "not a readable JSON object"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    run = run_cli(
        ["--output-dir", str(tmp_path / "out"), "--config", str(tmp_path / "config.json"), "--max-steps", "1"]
    )
    assert message in one_line_error(run)


def test_resuming_with_another_method_or_model_config_is_one_line(tmp_path):
    pretrain(tiny_args(tmp_path, max_steps=2, checkpointing_steps=2))
    latest = ["--output-dir", str(tmp_path / "run"), "--resume-from-checkpoint", "latest"]
    common = ["--image-size", "16", "--patch-size", "4", "--batch-size", "8", "--num-workers", "0", "--max-steps", "3"]
    (tmp_path / "tiny.json").write_text(json.dumps(METHOD_MODELS["simmim"]))
    run = run_cli([*latest, *common, "--config", str(tmp_path / "tiny.json"), "--method", "simmim"])
    assert "was written by --method mae, not simmim" in one_line_error(run)
    (tmp_path / "wider.json").write_text(json.dumps({**TINY_MODEL, "intermediate_size": 128}))
    run = run_cli([*latest, *common, "--config", str(tmp_path / "wider.json")])
    assert "another model config: intermediate_size=64 there, 128 here" in one_line_error(run)


def test_an_empty_saved_dataset_is_one_line(tmp_path):
    import datasets

    empty = datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()}))
    empty.save_to_disk(str(tmp_path / "empty"))
    run = run_cli(["--dataset", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "out"), "--max-steps", "1"])
    assert "empty" in one_line_error(run)


def test_evaluate_refuses_an_edited_config_a_corrupt_file_and_pickles_in_one_line(tmp_path):
    pretrain(tiny_args(tmp_path, max_steps=1))
    folder = tmp_path / "run"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))  # 2 blocks of random weights
    run = hf_mim_command("evaluate", ["--model", str(folder), "--output-dir", str(tmp_path / "e")], timeout=300)
    assert "tensors the config asks for are not in the weights" in one_line_error(run)
    (folder / "config.json").write_text(json.dumps(config))
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(64)
    run = hf_mim_command("evaluate", ["--model", str(folder), "--output-dir", str(tmp_path / "e")], timeout=300)
    assert "safetensors weights cannot be read" in one_line_error(run)
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    run = hf_mim_command("visualize", ["--model", str(folder), "--output-dir", str(tmp_path / "v")], timeout=300)
    assert "has only pickle weights (pytorch_model.bin)" in one_line_error(run)
