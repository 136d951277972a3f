"""Issue 17's tally: inputs a careless or hostile user would give, each run through the `hf-mim` command line of the
code in the current directory and classified as a clear error, a silently wrong result, a traceback, lost data or a
security failure.

    python benchmarks/careless_inputs.py --workdir /tmp/careless

Run it from the root of any checkout (cwd decides which hf_mim is imported), so that the same cases can be tried
on an older commit. Cases that need a Hub server, a full disk, a read-only folder as non-root or two concurrent
runs are covered by the test suite (tests/test_safety.py, tests/test_model_cards.py) instead.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="outputs/careless_inputs")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tally: dict[str, int] = {}
    for category, name, check in cases(work):
        verdict = check()
        tally[verdict] = tally.get(verdict, 0) + 1
        print(f"{category:15s} {name:40s} {verdict}", flush=True)
    print(json.dumps({"tried": sum(tally.values()), **tally}))


if __name__ == "__main__":
    main()
