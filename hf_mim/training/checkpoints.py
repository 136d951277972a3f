"""Checkpoints that are never half-written, that a resume can trust, and that hold nothing unpickled unsafely.

Layout: OUTPUT_DIR/checkpoints/step-N/, holding what `accelerator.save_state` writes (model as safetensors, every
optimizer, the grad scaler, each process's RNG states), `hf_mim_state.json` and `hf_mim_state.safetensors` (the
schedulers and the method's extra state, such as an EMA teacher: JSON and tensors, never pickles),
`trainer_state.json` (run id, method, model config, step, epoch, data position, loss history) and `manifest.json`
(every file with its size and SHA-256). A checkpoint is written under a temporary name and renamed when complete, so
`step-N` exists only whole. On resume, a checkpoint whose files do not match its manifest (a truncated copy, a disk
that filled up, an edited file) is skipped for the previous one, with a warning; every pickle-format file is loaded
with `weights_only=True` before accelerate reads it, so a planted `__reduce__` payload is refused, never run.
Checkpoints belong to the run that wrote them (its run id): `latest` and `--checkpoints-total-limit` never touch
another run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle  # for its error type only: nothing here unpickles without weights_only
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils.other import TORCH_SAFE_GLOBALS
from safetensors.torch import load_file, save_file

from ..errors import TrainingError, one_line
from .run_folder import is_no_space, is_write_failure, no_space_message

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"
EXTRA_STATE = "hf_mim_state"  # .json (structure and scalars) + .safetensors (tensors)
PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")
# step-N, or step-N.RUNID where another run's step-N was there first
_STEP = re.compile(r"^step-(\d+)(?:\.[0-9a-f]+)?$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def save_checkpoint(
    accelerator, output_dir, step: int, trainer_state: dict, total_limit: int | None = None, extra_objects=()
) -> Path:
    """Write checkpoint `step` atomically. Must be called on every process (save_state is collective). A full disk
    (or any write error) on any process stops every process alike, with the last checkpoint kept named."""
    root = checkpoint_root(output_dir)
    run_id = trainer_state.get("run_id")
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if final.exists() and _run_of(final) not in (run_id, None):
        final = root / f"step-{step}.{run_id}"  # another run's checkpoint of the same step: never replaced
    problem = None
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            save_extra_state(extra_objects, tmp)
            (tmp / TRAINER_STATE).write_text(json.dumps({**trainer_state, "step": step}, indent=2))
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _digest(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            _write_synced(tmp / MANIFEST, json.dumps(files, indent=2))
    except Exception as err:  # noqa: BLE001 - raised on one process, it would leave the others waiting in the reduce
        if not is_write_failure(err):
            logger.exception("checkpoint %s failed", final)
        last = next(iter(reversed(list_checkpoints(output_dir, run_id))), None)
        problem = (
            no_space_message(root, _size(tmp), last)
            if is_no_space(err, root)
            else f"could not write checkpoint {final}: {type(err).__name__}: {one_line(err)}; the last checkpoint "
            f"kept is {last}"
        )
    failed = accelerator.reduce(torch.tensor(float(problem is not None), device=accelerator.device), "sum").item()
    if failed:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)

        raise TrainingError(problem or f"another process could not write checkpoint {final}")
    if accelerator.is_main_process:
        if final.exists():  # this run's same step, written again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:
            for old in list_checkpoints(output_dir, run_id)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# -- extra state as JSON and safetensors --------------------------------------------------------------------------


def _split_tensors(value, tensors: dict, prefix: str):
    """`value` with every tensor replaced by {"__tensor__": key}, the tensors collected in `tensors`."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {str(k): _split_tensors(v, tensors, f"{prefix}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_tensors(v, tensors, f"{prefix}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state holds a {type(value).__name__} at {prefix}; only tensors and JSON values")


def _join_tensors(value, tensors: dict):
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    return value


def save_extra_state(objects, folder: Path) -> None:
    """The `state_dict()` of each object (schedulers, an EMA teacher) as JSON plus safetensors."""
    tensors: dict = {}
    states = [_split_tensors(obj.state_dict(), tensors, f"object{i}") for i, obj in enumerate(objects)]
    (Path(folder) / f"{EXTRA_STATE}.json").write_text(json.dumps(states, indent=2))
    save_file(tensors, str(Path(folder) / f"{EXTRA_STATE}.safetensors"))


def load_extra_state(objects, folder: Path) -> None:
    """Restore `objects` from `save_extra_state`'s files; from a checkpoint of an earlier hf_mim, which pickled them
    through accelerate (`custom_checkpoint_N.pkl`), with `weights_only=True`."""
    folder = Path(folder)
    if (folder / f"{EXTRA_STATE}.json").is_file():
        states = json.loads((folder / f"{EXTRA_STATE}.json").read_text())
        tensors = load_file(str(folder / f"{EXTRA_STATE}.safetensors"))
        if len(states) != len(objects):
            raise ValueError(f"{folder} holds the state of {len(states)} objects; this run has {len(objects)}")
        for obj, state in zip(objects, states, strict=True):
            obj.load_state_dict(_join_tensors(state, tensors))
        return
    for i, obj in enumerate(objects):
        obj.load_state_dict(_load_pickle(folder / f"custom_checkpoint_{i}.pkl"))


def _load_pickle(path: Path):
    """A pickle-format file with `weights_only=True` (and accelerate's allow-list for numpy RNG states): tensors,
    containers and plain values only. Anything else raises ValueError naming the file; nothing in it runs."""
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"refusing checkpoint file {path}: it holds more than tensors and plain values ({first})"
        ) from None


def verify_loadable(folder: Path) -> None:
    """Load every pickle-format file of a checkpoint with `weights_only=True` before anything else reads it."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.name.endswith(".metadata"):
            # torch.distributed.checkpoint (FSDP's SHARDED_STATE_DICT) reads this with pickle.load, which can run
            # code, and a restricted load cannot read it
            raise ValueError(
                f"cannot resume from {folder}: {path.name} is torch.distributed.checkpoint metadata, a pickle that "
                "torch would load without weights_only. Save FSDP checkpoints with fsdp_state_dict_type: "
                "FULL_STATE_DICT"
            )
        if path.is_file() and path.suffix in PICKLE_SUFFIXES:
            _load_pickle(path)


def list_checkpoints(output_dir, run_id: str | None = None) -> list[Path]:
    """Complete-named checkpoints (step-N) of run `run_id`, oldest first. Checkpoints written before run ids existed
    (no `run_id` in their state) count as anyone's; with `run_id=None`, all are listed."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found) if run_id is None or _run_of(p) in (run_id, None)]


def _run_of(path: Path) -> str | None:
    try:
        return json.loads((path / TRAINER_STATE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when every file matches its manifest (size and SHA-256)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        json.loads((path / TRAINER_STATE).read_text())["step"]
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable {MANIFEST} or {TRAINER_STATE} ({type(err).__name__})"
    for name, expected in manifest.items():
        file = path / name
        size, digest = (expected, None) if isinstance(expected, int) else (expected["size"], expected.get("sha256"))
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {size}"
        if digest is not None and _digest(file) != digest:
            return f"{name} does not match its SHA-256 in the manifest (changed since it was written)"
    return None


def resolve_resume(output_dir, resume: str, run_id: str | None = None) -> Path | None:
    """`resume` is a checkpoint folder or 'latest'. For 'latest', the newest valid checkpoint of run `run_id`,
    skipping broken ones with a warning; None (start afresh) when there is none yet."""
    if resume != "latest":
        path = Path(resume)
        problem = checkpoint_problem(path) if path.is_dir() else "no such folder"
        if problem:
            raise ValueError(f"--resume-from-checkpoint {resume}: cannot resume: {problem}")
        return path
    for path in reversed(list_checkpoints(output_dir, run_id)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping checkpoint %s: %s; trying the previous one", path, problem)
    return None


def load_trainer_state(path: Path) -> dict:
    return json.loads((path / TRAINER_STATE).read_text())


__all__ = [
    "checkpoint_problem",
    "list_checkpoints",
    "load_extra_state",
    "load_trainer_state",
    "resolve_resume",
    "save_checkpoint",
    "save_extra_state",
    "verify_loadable",
]
