"""The output folder of an `hf-mim pretrain` run: whose it is, who is writing it, and how its final model lands.

- **Ownership.** A folder holding files that no hf-mim run wrote (someone's model, their notes) is refused unless
  `--overwrite-output-dir` or `--resume-from-checkpoint` says otherwise, as transformers' example scripts do. A run
  records itself in `training_args.json` (with a `run_id`), which is how a later run recognises the folder as one.
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
import shutil
import socket
import uuid
from pathlib import Path

LOCK_FILE = ".hf_mim.lock"
TRAINING_ARGS = "training_args.json"
TRAINING_SUMMARY = "training_summary.json"
# Names a run writes at the top of its folder (the modeling code *.py and pictures *.png besides). A re-run into its
# own folder removes these first, so nothing of the previous model survives beside the new one.
RUN_OUTPUTS = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "ema_teacher.safetensors",
    "eval_results.json",
    TRAINING_ARGS,
    TRAINING_SUMMARY,
)
# Moved into place last, in this order: a folder whose summary is there holds a whole model.
RECORDS_LAST = ("README.md", TRAINING_SUMMARY)


class RunFolderError(ValueError):
    """The output folder cannot be used, with a one-line reason."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


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


def check_output_dir(folder: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a file, or a non-empty folder no hf-mim run wrote, unless told to overwrite or resume."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--output-dir {folder} is a file; allowed: a new or empty folder, or an hf-mim run's")
    if not folder.is_dir() or overwrite or resume:
        return
    others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
    if others and not written_by_hf_mim(folder):
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise RunFolderError(
            f"--output-dir {folder} holds files no hf-mim run wrote ({shown}); allowed: a new or empty folder, or "
            "one an hf-mim run wrote. Pass --overwrite-output-dir to write into it anyway"
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


def clear_previous_outputs(folder: Path) -> list[str]:
    """Remove what an earlier run of this folder wrote at its top level (model, records, pictures, modeling
    code, a generated card); checkpoints stay, scoped by their run id. Only for folders an hf-mim run wrote."""
    from ..model_cards.card import GENERATED_MARKER

    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file() or path.is_symlink():
            continue
        generated_card = path.name == "README.md" and GENERATED_MARKER in path.read_text(errors="replace")
        if path.name in RUN_OUTPUTS or path.suffix in (".png", ".py") or generated_card:
            path.unlink()
            removed.append(path.name)
    return removed


def no_space_message(folder: Path, needed: int, last_checkpoint: Path | None) -> str:
    usage = shutil.disk_usage(folder if folder.exists() else folder.parent)
    kept = f"the last checkpoint kept is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
    return (
        f"no space left on the disk of {folder} ({usage.free / 1e6:.0f} MB free, about {needed / 1e6:.0f} MB "
        f"needed); {kept}. Free some space and resume with --resume-from-checkpoint latest"
    )


def is_no_space(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def move_into_place(staging: Path, folder: Path) -> None:
    """Move every file of `staging` into `folder` (os.replace: atomic per file), the records last, then remove
    `staging`."""
    names = sorted(p.name for p in staging.iterdir())
    ordered = [n for n in names if n not in RECORDS_LAST] + [n for n in RECORDS_LAST if n in names]
    for name in ordered:
        os.replace(staging / name, folder / name)
    staging.rmdir()


__all__ = [
    "LOCK_FILE",
    "RunFolderError",
    "RunLock",
    "check_output_dir",
    "clear_previous_outputs",
    "is_no_space",
    "move_into_place",
    "new_run_id",
    "no_space_message",
    "previous_run_id",
    "written_by_hf_mim",
]
