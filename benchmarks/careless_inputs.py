"""Issues 17 and 32: inputs a careless or hostile user would give, each run through the `hf-mim` command line (and
`examples/run_pretraining.py`) of the code in the current directory, and classified as a clear error (or a correct
result), a silently wrong result, a traceback, lost data or a security failure.

    python benchmarks/careless_inputs.py --issue 32 --workdir /tmp/careless      # --issue 17 | 32 | all
    CARELESS_VERBOSE=1 python benchmarks/careless_inputs.py --only NAME ...      # each run's exit and last lines

Run it from the root of any checkout (cwd decides which hf_mim is imported), so that the same cases can be tried
on an older commit. Issue 32's push cases run against tests/hub_server.py's Hub on loopback; its full-disk cases
mount a 5 MB and an 8 MB tmpfs (root only; "not run" otherwise). Issue 17's cases that need a Hub server, a fault
or two concurrent runs are tests instead (tests/test_safety.py, tests/test_model_cards.py).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

TINY = [
    *("--model-size", "tiny", "--image-size", "32", "--patch-size", "8", "--max-steps", "2", "--batch-size", "8"),
    *("--num-workers", "0", "--config", "CONFIG"),
]


def hf_mim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    return subprocess.run(
        [sys.executable, "-m", "hf_mim", *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd
    )


def config_file(work: Path, name: str, content) -> str:
    path = work / f"{name}.json"
    path.write_text(json.dumps(content))
    return str(path)


def pretrain(out: Path, *extra: str, tiny=TINY) -> subprocess.CompletedProcess:
    tiny = [config_file(out.parent, "tiny_config", {"num_hidden_layers": 1}) if t == "CONFIG" else t for t in tiny]
    return hf_mim("pretrain", "--output-dir", str(out), *tiny, *extra)


def outcome(run: subprocess.CompletedProcess) -> str:
    """'clear error' (exit 2 with an `error:` line and no traceback), 'traceback', or 'accepted' (exit 0)."""
    if os.environ.get("CARELESS_VERBOSE"):
        print(
            f"   rc={run.returncode} {' '.join(map(str, run.args[2:]))[:200]}\n   "
            + "\n   ".join(run.stderr.strip().splitlines()[-3:])
        )
    if run.returncode == 0:
        return "accepted"
    if "Traceback (most recent call last)" in run.stderr or run.returncode != 2:
        return "traceback"
    return "clear error" if "error:" in run.stderr else "traceback"


def summary(out: Path) -> dict:
    path = out / "training_summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


class Payload:
    """Unpickling this writes a marker file: whoever loads it with weights_only=False runs our code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cases(work: Path):
    """(category, name, function returning the verdict: 'ok', 'silently wrong', 'traceback', 'data lost',
    'security')."""

    def expect_error(run):
        got = outcome(run)
        return "ok" if got == "clear error" else ("traceback" if got == "traceback" else "silently wrong")

    def bad_value(name, *flags):
        return name, lambda: expect_error(pretrain(work / name, *flags))

    yield "silently wrong", *bad_value("lr_inf", "--lr", "inf")
    yield "silently wrong", *bad_value("weight_decay_nan", "--weight-decay", "nan")
    yield "silently wrong", *bad_value("weight_decay_negative", "--weight-decay", "-0.1")
    yield "silently wrong", *bad_value("warmup_longer_than_run", "--warmup-steps", "100")
    yield "silently wrong", *bad_value("fp16_on_cpu", "--mixed-precision", "fp16")

    def nothing_decodes():
        folder = work / "garbage"
        folder.mkdir(exist_ok=True)
        for i in range(16):
            (folder / f"{i}.png").write_bytes(b"not a png" * (i + 1))
        return expect_error(pretrain(work / "nothing_decodes", "--dataset", str(folder)))

    yield "silently wrong", "nothing_decodes", nothing_decodes

    def simmim_square_too_large():
        tiny = [*TINY[:-1], config_file(work, "square", {"num_hidden_layers": 1, "mask_patch_size": 32})]
        run = pretrain(work / "simmim_square", "--method", "simmim", tiny=tiny)
        verdict = expect_error(run)
        return verdict if verdict != "ok" or "mask_patch_size" in run.stderr else "silently wrong"

    yield "silently wrong", "simmim_mask_square_covers_image", simmim_square_too_large

    def trained_copy(name: str, **config_changes) -> Path:
        """A copy of one small trained model, its config.json changed as given."""
        model = work / "base_model"
        if not (model / "model.safetensors").exists():
            pretrain(model)
        copy = work / name
        shutil.copytree(model, copy, dirs_exist_ok=True)
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps({**config, **config_changes}))
        return copy

    def evaluate(folder: Path) -> subprocess.CompletedProcess:
        return hf_mim("evaluate", "--model", str(folder), "--protocol", "knn", "--no-save-to-model")

    def edited_config_adds_layers():
        return expect_error(evaluate(trained_copy("edited_config", num_hidden_layers=3)))

    yield "silently wrong", "edited_config_adds_layers", edited_config_adds_layers

    def output_is_a_file():
        (work / "a_file").write_text("x")
        return expect_error(pretrain(work / "a_file"))

    yield "traceback", "output_dir_is_a_file", output_is_a_file
    yield "traceback", *bad_value("config_not_an_object", "--config", config_file(work, "list", [1, 2]))
    float_size = [*TINY[:-1], config_file(work, "float", {"image_size": 32.5})]
    yield "traceback", "config_float_image_size", lambda: expect_error(pretrain(work / "float", tiny=float_size))

    def resume_other_method():
        out = work / "resume_other"
        pretrain(out, "--checkpointing-steps", "1")
        return expect_error(pretrain(out, "--method", "simmim", "--resume-from-checkpoint", "latest"))

    yield "traceback", "resume_with_another_method", resume_other_method

    def corrupt_safetensors():
        corrupt = trained_copy("corrupt")
        (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
        return expect_error(evaluate(corrupt))

    yield "traceback", "corrupt_safetensors", corrupt_safetensors

    def empty_dataset():
        from datasets import Dataset, Features, Image

        folder = work / "empty_dataset"
        if not folder.exists():
            Dataset.from_dict({"image": []}, features=Features({"image": Image()})).save_to_disk(str(folder))
        return expect_error(pretrain(work / "empty_run", "--dataset", str(folder)))

    yield "traceback", "empty_saved_dataset", empty_dataset

    def absurd_sizes():
        absurd = trained_copy("absurd", hidden_size=2**20, intermediate_size=2**22, num_attention_heads=1)
        return expect_error(evaluate(absurd))

    yield "traceback", "absurd_sizes_in_config", absurd_sizes

    def someone_elses_folder():
        out = work / "someone_else"
        out.mkdir(exist_ok=True)
        files = {"config.json": '{"mine": 1}', "model.safetensors": "my weights", "README.md": "my notes"}
        for name, text in files.items():
            (out / name).write_text(text)
        pretrain(out)
        kept = all((out / name).read_text() == text for name, text in files.items())
        return "ok" if kept else "data lost"

    yield "data lost", "output_dir_of_someone_else", someone_elses_folder

    def limit_deletes_other_runs():
        out = work / "two_runs"
        pretrain(out, "--checkpointing-steps", "1", "--seed", "1")
        before = sorted(p.name for p in (out / "checkpoints").iterdir())
        pretrain(out, "--checkpointing-steps", "1", "--checkpoints-total-limit", "1", "--seed", "2")
        after = sorted(p.name for p in (out / "checkpoints").iterdir())
        return "ok" if set(before) <= set(after) or not before else "data lost"

    yield "data lost", "checkpoint_limit_deletes_another_runs", limit_deletes_other_runs

    def convert_onto_itself():
        copy = trained_copy("convert_self")
        before = (copy / "model.safetensors").read_bytes()
        run = hf_mim("convert", str(copy), str(copy))
        same = (copy / "model.safetensors").read_bytes() == before
        return "ok" if run.returncode != 0 and same else ("data lost" if not same else expect_error(run))

    yield "data lost", "convert_src_onto_itself", convert_onto_itself

    def planted_payload():
        out = work / "planted"
        pretrain(out, "--checkpointing-steps", "1")
        marker = work / "PAYLOAD_RAN"
        marker.unlink(missing_ok=True)
        step = sorted((out / "checkpoints").iterdir())[-1]
        targets = [p for p in step.iterdir() if p.suffix in (".pkl", ".bin", ".pt")]
        for path in targets:
            path.write_bytes(pickle.dumps(Payload(str(marker))))
        pretrain(out, "--resume-from-checkpoint", "latest", "--max-steps", "3")
        return "security" if marker.exists() else "ok"

    yield "security", "resume_runs_a_planted_pickle", planted_payload

    def pickle_only_folder():
        folder = trained_copy("pickle_only")
        marker = work / "PAYLOAD_RAN_EVAL"
        marker.unlink(missing_ok=True)
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(str(marker))))
        run = evaluate(folder)
        return "security" if marker.exists() else expect_error(run)

    yield "security", "evaluate_a_pickle_only_folder", pickle_only_folder


USER_FILES = {
    "config.json": '{"mine": 1}',
    "model.safetensors": "my weights",
    "README.md": "# my notes",
    "train.py": "print('my script')",
    "my_plot.png": "my plot",
}


def user_folder(path: Path) -> Path:
    """Someone's own folder: their config.json, weights, README.md, script and plot (not hf_mim's)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in USER_FILES.items():
        (path / name).write_text(text)
    return path


def unchanged(path: Path, files: dict[str, str] = USER_FILES) -> bool:
    return all((path / name).is_file() and (path / name).read_text() == text for name, text in files.items())


def example(*args: str) -> subprocess.CompletedProcess:
    """`examples/run_pretraining.py` of the checkout in the current directory."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    script = Path(os.getcwd(), "examples", "run_pretraining.py")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)


EXAMPLE_TINY = [
    *("--model_size", "tiny", "--image_size", "32", "--patch_size", "8", "--max_steps", "2"),
    *("--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--report_to", "none"),
]


class LocalHub:
    """tests/hub_server.py's Hub on loopback, for the push cases: `hf_mim push` runs against it."""

    def __enter__(self):
        sys.path.insert(0, str(Path(os.getcwd(), "tests")))
        from hub_server import HubServer

        self.server = HubServer().__enter__()
        return self

    def __exit__(self, *exc):
        self.server.stop()

    def push(
        self, folder, repo_id: str, *extra: str, stdin: str | None = None, cwd=None
    ) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_ENDPOINT": self.server.url,
            "HF_TOKEN": "test-token",
            "PYTHONPATH": os.getcwd(),
        }
        return subprocess.run(
            [sys.executable, "-m", "hf_mim", "push", str(folder), repo_id, *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            input=stdin,
            cwd=cwd,
        )

    def files(self, repo_id: str) -> dict[str, bytes]:
        try:
            return self.server.files(repo_id)
        except KeyError:
            return {}


def issue_32_cases(work: Path, hub: LocalHub):
    """Issue 32's inputs: (category, name, check). M is a folder `hf-mim pretrain --max-steps 2` wrote; USER a
    folder of someone's own files."""

    def expect_error(run):
        got = outcome(run)
        return "ok" if got == "clear error" else ("traceback" if got == "traceback" else "silently wrong")

    def trained(name: str) -> Path:
        """A copy of one small trained model (trained once)."""
        base = work / "M"
        if not (base / "model.safetensors").exists():
            pretrain(base, "--checkpointing-steps", "1")
        copy = work / name
        shutil.copytree(base, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints", ".hf_mim.lock"))
        return copy

    def empty_cwd() -> Path:
        folder = work / "empty_cwd"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        return folder

    # ---- security ------------------------------------------------------------------------------------------------
    def with_remote_code(name: str) -> tuple[Path, Path]:
        folder = trained(name)
        marker = work / f"{name}.RAN"
        marker.unlink(missing_ok=True)
        (folder / "evil.py").write_text(
            f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom transformers import PretrainedConfig\n"
            "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
        )
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilConfig"}
        config["model_type"] = "evil"  # a type no installed code knows: only the folder's code can load it
        (folder / "config.json").write_text(json.dumps(config))
        return folder, marker

    def code_runs(command: str):
        def check():
            folder, marker = with_remote_code(f"remote_{command}")
            args = {
                "evaluate": ["evaluate", "--model", str(folder), "--protocol", "knn", "--no-save-to-model"],
                "visualize": ["visualize", "--model", str(folder), "--output-dir", str(work / "remote_pictures")],
            }
            if command == "push":
                run = hub.push(folder, "tester/remote", stdin="y\n" * 20)
            else:
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
                run = subprocess.run(
                    [sys.executable, "-m", "hf_mim", *args[command]],
                    capture_output=True, text=True, env=env, timeout=600, input="y\n" * 20,
                )  # fmt: skip
            if marker.exists():
                return "security"
            if command == "push" and hub.files("tester/remote"):
                return "silently wrong"  # published a repository with no code behind its model type
            return expect_error(run)

        return check

    for command in ("evaluate", "visualize", "push"):
        yield "security", f"{command}_runs_the_folders_code_on_yes", code_runs(command)

    def stray_picture_uploaded():
        folder = trained("stray_png")
        from PIL import Image

        Image.new("RGB", (8, 8), "white").save(folder / "id_card_scan.png")
        hub.push(folder, "tester/stray")
        return "security" if "id_card_scan.png" in hub.files("tester/stray") else "ok"

    yield "security", "push_uploads_a_stray_png", stray_picture_uploaded

    def fake_png_uploaded():
        folder = trained("fake_png")
        (folder / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(1 << 20))
        run = hub.push(folder, "tester/fake")
        return "security" if "loss_curve.png" in hub.files("tester/fake") else expect_error(run)

    yield "security", "push_uploads_a_non_image_with_a_png_signature", fake_png_uploaded

    # ---- data lost -------------------------------------------------------------------------------------------
    def resume_latest_in_user_folder():
        out = user_folder(work / "user_latest")
        pretrain(out, "--resume-from-checkpoint", "latest")
        return "ok" if unchanged(out) else "data lost"

    yield "data lost", "resume_latest_into_a_user_folder", resume_latest_in_user_folder

    def resume_another_runs_checkpoint():
        step = sorted((work / "M" / "checkpoints").iterdir())[-1] if (work / "M").exists() else None
        if step is None:
            trained("warmup")
            step = sorted((work / "M" / "checkpoints").iterdir())[-1]
        out = user_folder(work / "user_resume")
        pretrain(out, "--resume-from-checkpoint", str(step), "--max-steps", "3")
        return "ok" if unchanged(out) else "data lost"

    yield "data lost", "resume_another_runs_checkpoint_into_a_user_folder", resume_another_runs_checkpoint

    def example_resume_into_user_folder():
        source = work / "A_trainer"
        if not source.exists():
            example("--output_dir", str(source), *EXAMPLE_TINY, "--save_steps", "2")
        checkpoints = sorted(source.glob("checkpoint-*"))
        out = user_folder(work / "user_example")
        target = str(checkpoints[-1]) if checkpoints else str(source / "checkpoint-2")
        example("--output_dir", str(out), *EXAMPLE_TINY, "--resume_from_checkpoint", target, "--max_steps", "3")
        return "ok" if unchanged(out) else "data lost"

    yield "data lost", "example_resumes_another_runs_checkpoint_into_a_user_folder", example_resume_into_user_folder

    def failed_rerun_keeps_the_model():
        folder = trained("rerun_fails")
        before = (folder / "model.safetensors").read_bytes()
        pretrain(folder, "--lr", "1e30", "--max-steps", "8")
        after = folder / "model.safetensors"
        return "ok" if after.is_file() and after.read_bytes() == before else "data lost"

    yield "data lost", "a_failed_rerun_deletes_the_previous_model", failed_rerun_keeps_the_model

    def overwrite_the_dataset_folder():
        folder = work / "own_dataset"
        folder.mkdir(exist_ok=True)
        from PIL import Image

        for i in range(16):
            Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(folder / f"{i}.png")
        (folder / "prepare.py").write_text("print('mine')")  # not train.py: `imagefolder` reads it as a split name
        kept = {p.name: p.read_bytes() for p in folder.iterdir()}
        pretrain(folder, "--dataset", str(folder), "--overwrite-output-dir")
        return (
            "ok"
            if all((folder / n).is_file() and (folder / n).read_bytes() == b for n, b in kept.items())
            else ("data lost")
        )

    yield "data lost", "overwrite_output_dir_on_the_datasets_own_folder", overwrite_the_dataset_folder

    def convert_onto_another_model():
        import torch
        from safetensors.torch import load_file

        source = trained("official_source")
        state = {
            k.removeprefix("vit."): v
            for k, v in load_file(source / "model.safetensors").items()
            if k.startswith("vit.")
        }
        official = work / "official.pth"
        torch.save({"model": state}, official)
        target = trained("M2")
        before = (target / "model.safetensors").read_bytes()
        run = hf_mim("convert", str(official), str(target), "--num-attention-heads", "3")
        same = (target / "model.safetensors").read_bytes() == before
        return expect_error(run) if same else "data lost"

    yield "data lost", "convert_into_another_trained_model", convert_onto_another_model

    def rerun_replaces_handwritten_readme():
        folder = trained("own_readme")
        (folder / "README.md").write_text("# my own card")
        pretrain(folder)
        return "ok" if (folder / "README.md").read_text() == "# my own card" else "data lost"

    yield "data lost", "a_rerun_replaces_a_handwritten_readme", rerun_replaces_handwritten_readme

    def rerun_deletes_user_files():
        folder = trained("own_files")
        mine = {"train.py": "print('mine')", "my_plot.png": "my plot"}
        for name, text in mine.items():
            (folder / name).write_text(text)
        pretrain(folder)
        return "ok" if unchanged(folder, mine) else "data lost"

    yield "data lost", "a_rerun_deletes_the_users_py_and_png", rerun_deletes_user_files

    # ---- tracebacks ------------------------------------------------------------------------------------------
    def full_disk(size: str, extra: tuple[str, ...]):
        def check():
            mount = work / f"tmpfs_{size}"
            mount.mkdir(exist_ok=True)
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode:
                return "not run"
            try:
                run = pretrain(mount / "run", *extra)
                left = [p.name for p in (mount / "run").glob(".tmp-*")] if (mount / "run").exists() else []
                verdict = expect_error(run)
                return verdict if not left or verdict != "ok" else "silently wrong"
            finally:
                subprocess.run(["umount", str(mount)])

        return check

    tiny_model = ("--model-size", "small")
    yield "traceback", "a_full_disk_at_the_final_save", full_disk("5m", tiny_model)
    yield "traceback", "a_full_disk_at_a_checkpoint", full_disk("8m", (*tiny_model, "--checkpointing-steps", "1"))

    def shard_folder(kind: str) -> Path:
        from datasets import Dataset, Features, Image
        from PIL import Image as PILImage

        folder = work / f"shards_{kind}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        images = [PILImage.new("RGB", (8, 8), (i, 0, 0)) for i in range(16)]
        data = Dataset.from_dict({"image": images}, features=Features({"image": Image()}))
        if kind == "parquet":
            data.to_parquet(str(folder / "a_good.parquet"))  # read first: the schema comes from a good shard
            raw = (folder / "a_good.parquet").read_bytes()
            (folder / "b_bad.parquet").write_bytes(raw[: len(raw) // 2] + raw[-8:])  # footer kept, body cut
        elif kind == "arrow":
            data.save_to_disk(str(folder / "saved"))
            arrow = next((folder / "saved").glob("*.arrow"))
            shutil.copyfile(arrow, folder / "a_good.arrow")
            raw = arrow.read_bytes()
            (folder / "b_bad.arrow").write_bytes(raw[:400] + b"\x00" * 64 + raw[464:600])
            shutil.rmtree(folder / "saved")
        else:
            import tarfile

            for shard in ("good", "bad"):
                with tarfile.open(folder / f"{shard}.tar", "w") as tar:
                    for i, image in enumerate(images):
                        path = folder / f"{i:04d}.png"
                        image.save(path)
                        tar.add(path, arcname=f"{shard}{i:04d}.png")
                        path.unlink()
            raw = (folder / "bad.tar").read_bytes()
            (folder / "bad.tar").write_bytes(raw[: len(raw) // 2 + 77])
        return folder

    def damaged_shard(kind: str, *extra: str):
        def check():
            out = work / f"run_{kind}{'_streamed' if extra else ''}"
            run = pretrain(out, "--dataset", str(shard_folder(kind)), *extra)
            if run.returncode == 0:  # a correct result names the damaged shard it skipped, and counts it
                return "ok" if "1 damaged, skipped" in str(summary(out).get("dataset")) else "silently wrong"
            return expect_error(run)

        return check

    for kind in ("parquet", "arrow", "tar"):
        yield "traceback", f"a_damaged_{kind}_shard", damaged_shard(kind)
    yield "traceback", "a_truncated_tar_shard_streamed", damaged_shard("tar", "--streaming")

    def named_pipe_in_visualize():
        folder = work / "pictures_with_pipe"
        folder.mkdir(exist_ok=True)
        from PIL import Image

        Image.new("RGB", (32, 32), "white").save(folder / "a.png")
        pipe = folder / "b.png"
        if not pipe.exists():
            os.mkfifo(pipe)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
        command = [sys.executable, "-m", "hf_mim", "visualize", "--model", str(trained("for_pipe")), "--images",
                   str(folder)]  # fmt: skip
        try:
            run = subprocess.run(command + ["--output-dir", str(work / "pipe_out")], capture_output=True, text=True,
                                 env=env, timeout=120)  # fmt: skip
        except subprocess.TimeoutExpired:
            return "traceback"  # hung
        return "ok" if run.returncode in (0, 2) and "Traceback" not in run.stderr else "traceback"

    yield "traceback", "a_named_pipe_among_the_images_of_visualize", named_pipe_in_visualize

    def labelled_dataset(name: str, labels: list) -> Path:
        from datasets import ClassLabel, Dataset, Features, Image, Value
        from PIL import Image as PILImage

        folder = work / name
        if not folder.exists():
            images = [PILImage.new("RGB", (8, 8), (i * 7 % 256, 0, 0)) for i in range(len(labels))]
            label = Value("int64") if None in labels else ClassLabel(num_classes=max(2, len(set(labels))))
            features = Features({"image": Image(), "label": label})
            Dataset.from_dict({"image": images, "label": labels}, features=features).save_to_disk(str(folder))
        return folder

    def evaluate_on(folder: Path, *extra: str) -> subprocess.CompletedProcess:
        return hf_mim("evaluate", "--model", str(trained("evaluated")), "--dataset", str(folder), "--protocol", "knn",
                      "--no-save-to-model", *extra)  # fmt: skip

    yield (
        "traceback",
        "evaluate_labels_holding_none",
        lambda: expect_error(evaluate_on(labelled_dataset("labels_none", [0, 1, None, 1] * 10))),
    )

    def empty_list_eval_results():
        folder = trained("eval_list")
        (folder / "eval_results.json").write_text("[]")
        run = hf_mim("evaluate", "--model", str(folder), "--protocol", "knn")
        return expect_error(run) if run.returncode else "ok"

    yield "traceback", "eval_results_json_holding_a_list", empty_list_eval_results

    def unreachable_hub():
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "x",
               "PYTHONPATH": os.getcwd(), "HF_HUB_DISABLE_XET": "1"}  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "hf_mim", "push", str(trained("unreachable")), "tester/x"],
                             capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
        return expect_error(run)

    yield "traceback", "push_to_an_unreachable_hub", unreachable_hub
    yield (
        "traceback",
        "evaluate_drop_path_2",
        lambda: expect_error(
            hf_mim(
                "evaluate",
                "--model",
                str(trained("drop_path")),
                "--protocol",
                "finetune",
                "--drop-path",
                "2",
                "--finetune-epochs",
                "1",
                "--no-save-to-model",
            )  # fmt: skip
        ),
    )

    def example_error(name: str, *flags: str, output: Path | None = None):
        def check():
            out = output or work / f"example_{name}"
            return expect_error(example("--output_dir", str(out), *EXAMPLE_TINY, *flags))

        return check

    yield "traceback", "example_bad_config_overrides", example_error("overrides", "--config_overrides", "mask_ratio")
    yield (
        "traceback",
        "example_persistent_workers_without_workers",
        example_error("persistent", "--dataloader_persistent_workers", "True"),
    )
    yield "traceback", "example_abbreviated_flag", example_error("abbrev", "--max_ste", "3")
    yield (
        "traceback",
        "example_latest_without_checkpoint",
        example_error("latest", "--resume_from_checkpoint", "latest"),
    )
    yield (
        "traceback",
        "example_foreign_output_dir",
        lambda: expect_error(example("--output_dir", str(user_folder(work / "example_foreign")), *EXAMPLE_TINY)),
    )

    def example_remote_code():
        folder, marker = with_remote_code("remote_example")
        run = example("--output_dir", str(work / "example_remote"), *EXAMPLE_TINY, "--model_name_or_path", str(folder))
        return "security" if marker.exists() else expect_error(run)

    yield "traceback", "example_remote_code_model", example_remote_code

    # ---- silently wrong --------------------------------------------------------------------------------------
    yield (
        "silently wrong",
        "beit_with_a_folder_that_is_no_tokenizer",
        lambda: expect_error(
            pretrain(work / "beit_bad_tokenizer", "--method", "beit", "--tokenizer", str(trained("not_a_tokenizer")))
        ),
    )

    def string_for_a_bool():
        tiny = [*TINY[:-1], config_file(work, "bool_string", {"num_hidden_layers": 1, "norm_pix_loss": "false"})]
        return expect_error(pretrain(work / "bool_string", tiny=tiny))

    yield "silently wrong", "config_value_of_the_wrong_type", string_for_a_bool

    def push_weights_not_fitting():
        folder = trained("misfit")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(
            json.dumps({**config, "intermediate_size": config["intermediate_size"] * 2})
        )
        run = hub.push(folder, "tester/misfit")
        return "silently wrong" if hub.files("tester/misfit") else expect_error(run)

    yield "silently wrong", "push_weights_that_do_not_fit_config_json", push_weights_not_fitting

    for flag in ("--dataset", "--output-dir", "--resume-from-checkpoint", "--config", "--tokenizer"):
        name = flag.removeprefix("--").replace("-", "_")
        extra = ("--method", "beit") if flag == "--tokenizer" else ()
        out = None if flag == "--output-dir" else work / f"empty_{name}"
        if out is None:
            yield (
                "silently wrong",
                "empty_output_dir",
                lambda: expect_error(hf_mim("pretrain", "--output-dir", "", *TINY[:-2], cwd=empty_cwd())),
            )
        else:
            yield (
                "silently wrong",
                f"empty_{name}",
                lambda out=out, flag=flag, extra=extra: expect_error(pretrain(out, flag, "", *extra)),
            )

    def push_empty_name():
        run = hub.push("", "tester/empty", cwd=trained("push_cwd"))
        return "silently wrong" if hub.files("tester/empty") else expect_error(run)

    yield "silently wrong", "push_an_empty_folder_name", push_empty_name

    def nan_tiff():
        import numpy as np
        from PIL import Image

        folder = work / "nan_tiff"
        folder.mkdir(exist_ok=True)
        for i in range(16):
            pixels = np.full((8, 8), i / 16, dtype=np.float32)
            if i == 0:
                pixels[3, 3] = np.nan
            Image.fromarray(pixels, mode="F").save(folder / f"{i}.tif")
        run = pretrain(work / "nan_tiff_run", "--dataset", str(folder))
        skipped = summary(work / "nan_tiff_run").get("skipped_images", [])
        return "ok" if run.returncode == 2 or any("0.tif" in str(s) for s in skipped) else expect_error(run)

    yield "silently wrong", "a_float_tiff_with_a_nan_pixel", nan_tiff
    yield (
        "silently wrong",
        "evaluate_a_one_class_dataset",
        lambda: expect_error(evaluate_on(labelled_dataset("one_class", [0] * 40))),
    )
    yield (
        "silently wrong",
        "evaluate_label_smoothing_5",
        lambda: expect_error(
            hf_mim(
                "evaluate",
                "--model",
                str(trained("smoothing")),
                "--protocol",
                "finetune",
                "--label-smoothing",
                "5",
                "--finetune-epochs",
                "1",
                "--no-save-to-model",
            )  # fmt: skip
        ),
    )
    for channels in (2, 13):
        tiny = [
            *TINY[:-1],
            config_file(work, f"channels{channels}", {"num_hidden_layers": 1, "num_channels": channels}),
        ]
        yield (
            "silently wrong",
            f"num_channels_{channels}",
            lambda tiny=tiny, c=channels: expect_error(pretrain(work / f"channels_{c}", tiny=tiny)),
        )
    yield (
        "silently wrong",
        "visualize_scale_0",
        lambda: expect_error(
            hf_mim(
                "visualize", "--model", str(trained("scale0")), "--scale", "0", "--output-dir", str(work / "scale0_out")
            )  # fmt: skip
        ),
    )

    def huge_png():
        from PIL import Image

        folder = work / "huge_png"
        folder.mkdir(exist_ok=True)
        for i in range(2):
            Image.new("L", (15000, 15000)).save(folder / f"big{i}.png", optimize=True)
        for i in range(14):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
        run = pretrain(work / "huge_run", "--dataset", str(folder))
        skipped = summary(work / "huge_run").get("skipped_images", [])
        return "ok" if any("big" in str(s) for s in skipped) or run.returncode == 2 else "silently wrong"

    yield "silently wrong", "a_decompression_bomb_png", huge_png

    def newline_repo_id():
        run = pretrain(work / "newline_repo", "--push-to-hub", "tester/name\n")
        trained_first = (work / "newline_repo" / "model.safetensors").exists()
        return "silently wrong" if trained_first else expect_error(run)  # refused only after training

    yield "silently wrong", "a_repo_id_with_a_trailing_newline", newline_repo_id

    def missing_branch():
        run = hub.push(trained("branch"), "tester/branch", "--revision", "no-such-branch")
        if run.returncode == 0:
            return "ok"
        verdict = expect_error(run)
        return verdict if verdict != "ok" or "no-such-branch" in run.stderr else "silently wrong"

    yield "silently wrong", "push_to_a_missing_branch", missing_branch

    def removed_weights_named():
        folder = trained("no_weights")
        (folder / "model.safetensors").unlink()
        run = hf_mim("evaluate", "--model", str(folder), "--protocol", "knn", "--no-save-to-model")
        verdict = expect_error(run)
        return verdict if verdict != "ok" or "model.safetensors" in run.stderr else "silently wrong"

    yield "silently wrong", "a_removed_model_safetensors_is_named", removed_weights_named


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="outputs/careless_inputs")
    parser.add_argument("--issue", choices=["17", "32", "all"], default="all", help="whose cases to run")
    parser.add_argument("--only", nargs="*", help="run only the cases with these names")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tally: dict[str, dict[str, int]] = {}
    with LocalHub() as hub:
        sets = {"17": lambda: cases(work), "32": lambda: issue_32_cases(work, hub)}
        for issue, make in sets.items():
            if args.issue not in (issue, "all"):
                continue
            for category, name, check in make():
                if args.only and name not in args.only:
                    continue
                try:
                    verdict = check()
                except Exception as error:  # noqa: BLE001 - a case that cannot even be set up is reported, not hidden
                    verdict = f"case failed: {type(error).__name__}: {error}"[:120]
                counts = tally.setdefault(category, {})
                counts[verdict] = counts.get(verdict, 0) + 1
                print(f"{issue} {category:15s} {name:58s} {verdict}", flush=True)
    print(json.dumps({"tried": sum(sum(c.values()) for c in tally.values()), "by_category": tally}))


if __name__ == "__main__":
    main()
