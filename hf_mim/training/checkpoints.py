"""Checkpoints that are never half-written, and that a resume can trust.

Layout: OUTPUT_DIR/checkpoints/step-N/, holding what `accelerator.save_state` writes (model, every optimizer,
registered schedulers and extra state, the grad scaler, each process's RNG states) plus `trainer_state.json` (step,
epoch, data position, loss history) and `manifest.json` (every file with its size). A checkpoint is written under
a temporary name and renamed when complete, so `step-N` exists only whole. On resume, a checkpoint whose files do
not match its manifest (a truncated copy, a disk that filled up) is skipped for the previous one, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"
_STEP = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def save_checkpoint(accelerator, output_dir, step: int, trainer_state: dict, total_limit: int | None = None) -> Path:
    """Write checkpoint `step` atomically. Must be called on every process (save_state is collective)."""
    root = checkpoint_root(output_dir)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        _write_synced(tmp / MANIFEST, json.dumps(files, indent=2))
        if final.exists():  # the same step written again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def list_checkpoints(output_dir) -> list[Path]:
    """Complete-named checkpoints (step-N), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when every file matches its manifest."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        json.loads((path / TRAINER_STATE).read_text())["step"]
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable {MANIFEST} or {TRAINER_STATE} ({type(err).__name__})"
    for name, size in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {size}"
    return None


def resolve_resume(output_dir, resume: str) -> Path | None:
    """`resume` is a checkpoint folder or 'latest'. For 'latest', the newest valid checkpoint, skipping broken
    ones with a warning; None (start afresh) when there is none yet."""
    if resume != "latest":
        path = Path(resume)
        problem = checkpoint_problem(path) if path.is_dir() else "no such folder"
        if problem:
            raise ValueError(f"--resume-from-checkpoint {resume}: cannot resume: {problem}")
        return path
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping checkpoint %s: %s; trying the previous one", path, problem)
    return None


def load_trainer_state(path: Path) -> dict:
    return json.loads((path / TRAINER_STATE).read_text())


__all__ = ["save_checkpoint", "list_checkpoints", "resolve_resume", "checkpoint_problem", "load_trainer_state"]
