"""The output folder of an `hf-mim pretrain` run: whose it is, who is writing it, and how its final model lands.

- **Ownership.** A folder holding files that no hf-mim run wrote (someone's model, their notes) is refused unless
  `--overwrite-output-dir` says otherwise, as transformers' example scripts do; asking to resume changes nothing
  there (a checkpoint of another folder would be resumed into someone's files). A run records itself in
  `training_args.json` (with a `run_id`), which is how a later run recognises the folder as one.
- **Only its own files.** A run replaces and removes only what hf-mim writes (`written_by_hf_mim_for`): the model, its
  records, pictures and modeling code, a generated card. A user's script, plot or hand-written README.md beside
  them is never touched, `--overwrite-output-dir` or not.
- **The previous model stays until the new one is in place.** A re-run sets the previous `training_args.json` aside
  (restored if the run fails) and removes the previous run's other files only once the new model has been moved
  in.
- **One writer.** `.hf_mim.lock` (pid, host, run id) is created exclusively before anything is written; a second run
  on the same folder refuses in one line. A lock whose process is gone (same host) is taken over.
- **Atomic, ordered final save.** The model and its records are written into a staging folder inside the output
  folder, then moved in: the weights first, `training_summary.json` (what marks a finished run) last. A disk that
  fills up mid-save leaves the previous files untouched and an error that names the disk, the space needed and the
  last checkpoint kept.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

from ..errors import RunFolderError
from ..model_cards.card import GENERATED_MARKER, folder_config, is_weight_shard, written_by_hf_mim_for

LOCK_FILE = ".hf_mim.lock"
TRAINING_ARGS = "training_args.json"
TRAINING_SUMMARY = "training_summary.json"
# Moved into place last, in this order: a folder whose summary is there holds a whole model.
RECORDS_LAST = ("README.md", TRAINING_SUMMARY)
#: Where a re-run keeps the previous run's training_args.json until its own model is in place.
PREVIOUS_ARGS = ".hf_mim.previous-args.json"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def check_not_in_dataset(folder: Path, dataset: str | None) -> None:
    """Refuse an output folder that is a local dataset's folder or lies inside it: the run would write among the
    images it reads, and list its own pictures and checkpoints as training data."""
    if not dataset or not os.path.isdir(dataset):
        return
    data, out = Path(dataset).resolve(), Path(folder).resolve()
    if out == data or out.is_relative_to(data):
        raise RunFolderError(
            f"--output-dir {folder} is inside --dataset {dataset}; allowed: a folder outside the dataset's (the run "
            "would write among the images it reads)"
        )


def written_by_hf_mim(folder: Path) -> bool:
    """Whether `folder` holds the `training_args.json` an hf-mim run writes first, or the `training_summary.json` of
    a finished `MIMTrainer` run (whose `training_args.json` is Trainer's)."""

    def read(name):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return None

    args, summary = read(TRAINING_ARGS), read(TRAINING_SUMMARY)
    if isinstance(args, dict) and {"method", "output_dir"} <= set(args):
        return True
    return isinstance(summary, dict) and {"method", "trainer"} <= set(summary)


def previous_run_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / TRAINING_ARGS).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


_TRAINER_CHECKPOINT = re.compile(r"checkpoint-\d+")
_STEP_FOLDER = re.compile(r"(\.tmp-)?step-\d+(\.\w+)?")


def _is_checkpoint_folder(path: Path) -> bool:
    """`checkpoints/` of `hf-mim pretrain` runs (step-N folders only), or a `checkpoint-N` folder of Trainer: a folder
    holding only these (a checkpoint copied in to be resumed) is a run's folder, and the run adds files beside them."""
    if path.is_symlink() or not path.is_dir():
        return False
    if path.name == "checkpoints":
        return all(p.is_dir() and _STEP_FOLDER.fullmatch(p.name) for p in path.iterdir())
    return _TRAINER_CHECKPOINT.fullmatch(path.name) is not None and (path / "trainer_state.json").is_file()


def check_output_dir(folder: Path, overwrite: bool, flag: str = "--output-dir") -> None:
    """Refuse a file, or a non-empty folder no hf-mim run wrote, unless told to overwrite. A resume is no reason to
    write into someone's folder: the checkpoint may be another folder's."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{flag} {folder} is a file; allowed: a new or empty folder, or an hf-mim run's")
    if not folder.is_dir() or overwrite:
        return
    others = sorted(
        p.name for p in folder.iterdir() if p.name not in (LOCK_FILE, PREVIOUS_ARGS) and not _is_checkpoint_folder(p)
    )
    if others and not written_by_hf_mim(folder):
        overwrite_flag = "--overwrite_output_dir" if "_" in flag else "--overwrite-output-dir"
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise RunFolderError(
            f"{flag} {folder} holds files no hf-mim run wrote ({shown}); allowed: a new or empty folder, or "
            f"one an hf-mim run wrote. Pass {overwrite_flag} to write into it anyway (only the files hf-mim "
            "writes are replaced)"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """An exclusive lock on an output folder: `.hf_mim.lock` with the holder's pid, host and run id."""

    def __init__(self, folder: Path, run_id: str):
        self.path, self.run_id, self.held = Path(folder) / LOCK_FILE, run_id, False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._stale(holder):
                    raise RunFolderError(
                        f"--output-dir {self.path.parent} is in use by another run (pid {holder.get('pid')} on "
                        f"{holder.get('host')}); wait for it, or remove {self.path} if that run is gone"
                    ) from None
                self.path.unlink(missing_ok=True)  # a dead process's lock, or an unreadable one
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return
        raise RunFolderError(f"could not take the lock {self.path}: another run keeps taking it")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # another machine's process cannot be checked from here
        pid = holder.get("pid")
        return not isinstance(pid, int) or not _pid_alive(pid)

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is None or holder.get("run_id") == self.run_id:
                self.path.unlink(missing_ok=True)
            self.held = False


def is_generated_card(path: Path) -> bool:
    return path.is_file() and GENERATED_MARKER in path.read_text(encoding="utf-8", errors="replace")


def previous_outputs(folder: Path) -> list[str]:
    """What an earlier run of this folder wrote at its top level, by name (`written_by_hf_mim_for` its config;
    README.md only where it is a generated card): what a re-run may replace or, once its model is in, remove."""
    names = written_by_hf_mim_for(folder_config(folder))
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file() or path.is_symlink() or not (path.name in names or is_weight_shard(path.name)):
            continue
        if path.name == "README.md" and not is_generated_card(path):
            continue
        found.append(path.name)
    return found


def set_aside_previous_args(folder: Path) -> bool:
    """Keep the previous run's training_args.json aside while a new run of this folder trains (its own must be
    there for a resume to find); `restore_previous_args` puts it back if the run fails."""
    path = folder / TRAINING_ARGS
    if not path.is_file():
        return False
    os.replace(path, folder / PREVIOUS_ARGS)
    return True


def restore_previous_args(folder: Path) -> None:
    aside = folder / PREVIOUS_ARGS
    if aside.is_file():
        os.replace(aside, folder / TRAINING_ARGS)


def forget_previous_args(folder: Path) -> None:
    (folder / PREVIOUS_ARGS).unlink(missing_ok=True)


def _bytes(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def no_space_message(folder: Path, needed: int, last_checkpoint: Path | None) -> str:
    existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), Path("/"))
    usage = shutil.disk_usage(existing)
    then = (
        f"the last checkpoint kept is {last_checkpoint}. Free some space and resume with --resume-from-checkpoint "
        "latest"
        if last_checkpoint
        else "no checkpoint was written. Free some space and run again"
    )
    return f"no space left on the disk of {folder} ({_bytes(usage.free)} free, about {_bytes(needed)} needed); {then}"


_WRITER_FAILURES = ("no space left", "os error 28", "disk quota", "inline_container", "pytorchstreamwriter")


def is_write_failure(err: BaseException) -> bool:
    """Whether `err` is a failure to write a file: an OSError, or what safetensors (SafetensorError) and torch.save
    (RuntimeError from its zip writer) raise for one, a full disk included."""
    if isinstance(err, OSError):
        return True
    text = str(err).lower()
    return type(err).__name__ == "SafetensorError" or (
        isinstance(err, RuntimeError) and any(sign in text for sign in _WRITER_FAILURES)
    )


def is_no_space(err: BaseException, folder: Path | None = None) -> bool:
    """Whether a write failed for want of space. torch's zip writer says only that a write fell short
    ("unexpected pos"), so for it the disk of `folder` is asked how much is left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err).lower()
    if any(sign in text for sign in _WRITER_FAILURES[:3]):
        return True
    if folder is not None and is_write_failure(err):
        existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), None)
        return existing is not None and shutil.disk_usage(existing).free < 16 * 2**20
    return False


def move_into_place(staging: Path, folder: Path, stale: list[str] = ()) -> tuple[list[str], list[str]]:
    """Move every file of `staging` into `folder` (os.replace: atomic per file), the records last, then remove
    `staging` and the `stale` names (an earlier run's files the new one did not write again). A README.md a person
    wrote (no generated-card marker) is kept, and the generated card not moved over it. Returns (the names kept,
    the names removed)."""
    names = sorted(p.name for p in staging.iterdir())
    kept = []
    if "README.md" in names and (folder / "README.md").exists() and not is_generated_card(folder / "README.md"):
        (staging / "README.md").unlink()
        names.remove("README.md")
        kept.append("README.md")
    ordered = [n for n in names if n not in RECORDS_LAST] + [n for n in RECORDS_LAST if n in names]
    for name in ordered:
        os.replace(staging / name, folder / name)
    staging.rmdir()
    removed = [name for name in stale if name not in names and name not in kept]
    for name in removed:
        (folder / name).unlink(missing_ok=True)
    return kept, removed


__all__ = [
    "LOCK_FILE",
    "RunLock",
    "check_output_dir",
    "check_not_in_dataset",
    "forget_previous_args",
    "is_generated_card",
    "is_no_space",
    "is_write_failure",
    "previous_outputs",
    "restore_previous_args",
    "set_aside_previous_args",
    "move_into_place",
    "new_run_id",
    "no_space_message",
    "previous_run_id",
    "written_by_hf_mim",
]
