"""Sharing on the Hub: checked repo ids and paths, and uploads of exactly what a model repository should hold.

`push_model(model, repo_id)` (what `model.push_to_hub` calls with hf_mim installed) and `push_folder(folder,
repo_id)` (`hf-mim push`, `hf-mim pretrain --push-to-hub`) upload, in one commit: the weights as safetensors (never
pickle files), config.json with an `auto_map`, preprocessor_config.json, the modeling code that `trust_remote_code`
loading needs, the run records and pictures, and README.md, the model card, validated locally before anything is
sent. Nothing here ever sets `trust_remote_code=True`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import RevisionNotFoundError
from PIL import Image, UnidentifiedImageError
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig

from .export import export_model
from .loading import load_checked, model_class_for
from .model_cards.card import (
    GENERATED_MARKER,
    TRAINER_STATE,
    TRAINING_SUMMARY,
    folder_config,
    is_weight_shard,
    model_card_for_folder,
    validate_model_card,
    weight_files,
    write_model_card,
    written_by_hf_mim_for,
)
from .modeling import base as _base
from .names import check_path_in_repo, check_repo_id

logger = logging.getLogger(__name__)

# What a run recorded beside its weights (besides its *.png pictures): carried along when a model loaded from that
# folder is pushed unchanged.
RUN_RECORDS = (TRAINING_SUMMARY, "training_args.json", TRAINER_STATE, "eval_results.json", "ema_teacher.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def files_to_upload(
    folder: str | os.PathLike, include: list[str] | tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """(uploaded, left out) top-level file names of a model folder: the files hf_mim writes for this model
    (`written_by_hf_mim_for` its config: weights, configs, run records, the pictures its card shows), plus the
    top-level files named in `include`. Anything else (a scan dropped into the folder, a script, modeling code,
    which `push_folder` exports fresh) is left out. Raises ValueError for a folder with no safetensors weights:
    pickled weights are never uploaded and never converted silently."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a directory")
    names = sorted(p.name for p in folder.iterdir())
    if "config.json" not in names:
        raise ValueError(f"{folder} has no config.json; pass a folder written by save_pretrained or hf-mim pretrain")
    if "model.safetensors" not in names and "model.safetensors.index.json" not in names:
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        raise ValueError(
            f"{folder} has no model.safetensors"
            + (f" (only pickle files: {pickles}, which hf_mim never uploads)" if pickles else "")
            + "; save it with save_pretrained, which writes safetensors"
        )
    for name in include:
        check_path_in_repo(name, "--include")
        if "/" in name or not (folder / name).is_file():
            raise ValueError(f"--include {name!r} is invalid: allowed: the name of a file at the top of {folder}")
        if name.endswith(PICKLE_SUFFIXES):
            raise ValueError(f"--include {name!r} is invalid: pickle files are never uploaded (unpickling runs code)")
    ours = {name for name in written_by_hf_mim_for(folder_config(folder)) if not name.endswith(".py")}
    uploaded, left_out = [], []
    for name in names:
        keep = (folder / name).is_file() and (name in ours or is_weight_shard(name) or name in include)
        (uploaded if keep else left_out).append(name)
    for name in uploaded:
        check_path_in_repo(name)
        check_link_target(folder, name)
        check_file_type(folder / name)
    return uploaded, left_out


def check_link_target(folder: Path, name: str) -> None:
    """A symlink in a folder to upload may point inside the folder, or into the Hub cache's blob store (a snapshot
    folder of the cache is links into `models--*/blobs/`); anything else (`/etc/passwd` named `loss_curve.png`, a
    key file named `model.safetensors`) is refused with a ValueError before any request is made."""
    path = folder / name
    if not path.is_symlink() and path.resolve().parent == folder.resolve():
        return
    target = path.resolve()
    if target.is_relative_to(folder.resolve()):
        return

    cache = Path(constants.HF_HUB_CACHE).resolve()
    if target.is_relative_to(cache) and target.parent.name == "blobs":
        return
    raise ValueError(
        f"{path} links to {target}, outside {folder} and the Hub cache's blob store; refusing to upload it "
        "(copy the file into the folder if it is meant to go up)"
    )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_file_type(path: Path) -> None:
    """An uploaded file must be what its name says: a PNG starts with the PNG signature, a safetensors file with a
    JSON header of the length its first 8 bytes give, a JSON file parses. Raises ValueError naming the file."""
    name = path.name
    with open(path, "rb") as f:
        head = f.read(8)
        if name.endswith(".png"):
            ok = head == _PNG_SIGNATURE and _decodes_as_png(path)
        elif name.endswith(".safetensors"):
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            ok = 1 < size <= path.stat().st_size - 8
            if ok:
                try:
                    ok = isinstance(json.loads(f.read(size)), dict)
                except ValueError:
                    ok = False
        elif name.endswith(".json"):
            try:
                json.loads((head + f.read()).decode("utf-8"))
                ok = True
            except ValueError:
                ok = False
        else:
            ok = True
    if not ok:
        kind = "PNG image" if name.endswith(".png") else "safetensors file" if ".safetensors" in name else "JSON file"
        raise ValueError(f"{path} is not a {kind}, as its name says; refusing to upload it")


def _decodes_as_png(path: Path) -> bool:
    """Whether a file is a whole PNG image, decoded: its signature alone would let any file through."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                return False
            image.verify()  # chunk CRCs
        with Image.open(path) as image:
            image.load()  # the pixel data itself (verify does not decompress it)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        return False
    return True


@dataclass
class PushArguments:
    """What `hf-mim push` takes; the CLI is generated from these fields, their defaults and their help."""

    output_dir: str = field(metadata={"help": "the saved model folder", "positional": True, "metavar": "OUTPUT_DIR"})
    repo_id: str = field(metadata={"help": "'name' or 'namespace/name'", "positional": True, "metavar": "REPO_ID"})
    private: bool = field(default=False, metadata={"help": "create the repository as private"})
    revision: str | None = field(default=None, metadata={"help": "branch to push to (default: main)"})
    commit_message: str | None = field(
        default=None, metadata={"help": "commit message (default: 'Upload <class> with hf_mim')"}
    )
    license: str | None = field(default=None, metadata={"help": "Hub license id for the card (default: apache-2.0)"})
    base_model: str | None = field(
        default=None, metadata={"help": "the Hub id these weights were fine-tuned from, for the card"}
    )
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN or the stored login)"})
    include: list[str] = field(
        default_factory=list,
        metadata={
            "help": "more top-level files of the folder to upload (only what hf_mim wrote goes up otherwise; the "
            "rest is listed as left out)"
        },
    )
    format: str = field(
        default="hf_mim",
        metadata={
            "help": "hf_mim: the folder as saved, with its modeling code for trust_remote_code; transformers: as "
            "`hf-mim export --format transformers` writes it (ViTMAEForPreTraining or ViTModel), which loads with "
            "transformers alone, with the same card, run records and pictures (default: %(default)s)",
            "choices": ["hf_mim", "transformers"],
        },
    )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    license: str | None = None,
    base_model: str | None = None,
    tags: list[str] | None = None,
    include: list[str] | tuple[str, ...] = (),
    check_loading: bool = True,
    format: str = "hf_mim",
):
    """Upload a saved model folder to `repo_id` in one commit; returns huggingface_hub's `CommitInfo`.

    Goes up: what hf_mim wrote for this model (`files_to_upload`) and the files named in `include`; the folder must
    load as it will on the Hub (its weights fit config.json) before anything is sent (`check_loading=False` only
    for a folder `save_pretrained` just wrote from a live model, as `push_model` does).

    The modeling code and config.json's `auto_map` are written fresh from the installed hf_mim; README.md is
    regenerated for `repo_id` (with `license`, `base_model` and extra `tags`) unless the folder holds a card a person
    wrote, and is validated before any upload.

    `format="transformers"`: the weights, config.json and processor go up as `hf-mim export --format transformers`
    writes them (transformers' own classes, no modeling code), with the same card, run records and pictures."""
    check_repo_id(repo_id)
    if base_model is not None:
        check_repo_id(base_model, "base_model")
    uploaded, left_out = files_to_upload(folder, include)
    folder = Path(folder)
    if left_out:
        logger.info("not uploaded from %s (name them with --include to add them): %s", folder, ", ".join(left_out))
    # hf_mim is imported here, so AutoConfig resolves the model_type locally; never the folder's own code
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    if check_loading:
        check_loads(folder, config)
    if format not in ("hf_mim", "transformers"):
        raise ValueError(f"--format={format!r} is invalid: allowed hf_mim or transformers")
    with tempfile.TemporaryDirectory() as staging:
        transformers_class = None
        if format == "transformers":
            exported = Path(staging, "transformers")
            transformers_class = export_model(folder, exported)[0].split()[1]
            # transformers' weights, config and processor replace hf_mim's; the records and pictures stay
            replaced = {"config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json"}
            uploaded = [n for n in uploaded if n not in replaced and not is_weight_shard(n)]
            code = [f"transformers/{p.name}" for p in sorted(exported.iterdir()) if p.name != "config.json"]
            config_file = "transformers/config.json"
        else:
            code = _base.export_remote_code(config, staging)
            config.save_pretrained(staging)
            config_file = "config.json"
        readme = folder / "README.md"
        if readme.exists() and GENERATED_MARKER not in readme.read_text(encoding="utf-8", errors="replace"):
            card_text = readme.read_text(encoding="utf-8")
        else:
            card = model_card_for_folder(
                folder,
                config=config,
                repo_id=repo_id,
                base_model=base_model,
                license=license,
                transformers_class=transformers_class,
                weights_folder=Path(staging, "transformers") if transformers_class else None,
            )
            if tags:
                card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags]))
            card_text = str(card)
        validate_model_card(card_text)
        operations = [CommitOperationAdd("README.md", card_text.encode("utf-8"))]
        operations += [CommitOperationAdd(Path(name).name, str(Path(staging, name))) for name in [*code, config_file]]
        operations += [
            CommitOperationAdd(
                name, _without_local_paths(folder / name) if name in PATH_RECORDS else str(folder / name)
            )
            for name in uploaded
            if name not in ("README.md", "config.json")
        ]
        api = HfApi()
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        try:
            return api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message or f"Upload {(config.architectures or ['model'])[0]} with hf_mim",
                commit_description=commit_description,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )
        except RevisionNotFoundError:
            raise ValueError(
                f"--revision {revision!r}: {repo_id} has no such branch; create it first "
                "(huggingface_hub's HfApi.create_branch), or leave --revision out to push to main"
            ) from None


#: Run records whose values include the run's own paths (output folder, dataset, starting checkpoint, resume point).
PATH_RECORDS = ("training_args.json", TRAINING_SUMMARY)


def _without_local_paths(path: Path) -> bytes:
    """A JSON run record as it goes up: each top-level value that is a local path (absolute, or naming something on
    this machine) becomes its last part, the folder's or file's name; the uploader's folders stay on this machine.
    The local file is not changed."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path.read_bytes()
    if not isinstance(record, dict):
        return path.read_bytes()
    for key, value in record.items():
        if (
            isinstance(value, str)
            and value
            and (os.path.isabs(value) or value.startswith("~") or os.path.exists(value))
        ):
            record[key] = os.path.basename(os.path.normpath(os.path.expanduser(value)))
    return json.dumps(record, indent=2).encode("utf-8")


def check_loads(folder: Path, config) -> None:
    """Refuse to upload a folder that would not load: every tensor of the model its config.json describes must be
    in the weights, with its shape (weights that do not fit an edited config.json would publish a repository
    nobody can load). Raises `CheckpointError` (a ValueError)."""
    load_checked(model_class_for(config), folder, config=config)


def push_model(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    license: str | None = None,
    base_model: str | None = None,
):
    """`model.push_to_hub(repo_id, ...)` for hf_mim models: `save_pretrained` into a temporary folder, then
    `push_folder`. Takes transformers' `push_to_hub` arguments; `tags` are added to the card's metadata."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        source = getattr(model.config, "_name_or_path", "") or ""
        if source and os.path.isdir(source):
            carry_run_records(source, folder)  # push_folder's card then shows that run's recipe, curve and pictures
        return push_folder(
            folder,
            repo_id,
            token=token,
            private=private,
            revision=revision,
            commit_message=commit_message,
            commit_description=commit_description,
            create_pr=create_pr,
            license=license,
            base_model=base_model or base_model_of(model.config),
            tags=tags,
            check_loading=False,  # the weights were just saved from this model: loading them back proves nothing
        )


def carry_run_records(source: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """Copy the run records and pictures of `source`, the folder a model was loaded from, into `folder`, where that
    model was just saved, if the weights saved there are the ones `source` holds, tensor for tensor (records of a
    run describe those weights only, not weights trained further). Returns the names copied. A symlink that leaves
    `source` is refused, as for an upload."""
    source, folder = Path(source), Path(folder)
    if source.resolve() == folder.resolve():
        return []
    names = [n for n in RUN_RECORDS if (source / n).is_file()]
    # the pictures hf_mim writes for that model, as a push of `source` itself would take them; no other image there
    ours = written_by_hf_mim_for(folder_config(source))
    names += sorted(p.name for p in source.glob("*.png") if p.is_file() and p.name in ours)
    if not names:
        return []
    if not _same_weights(source, folder):
        logger.warning(
            "not carrying the run records of %s: the weights differ from the ones saved there (trained further?)",
            source,
        )
        return []
    for name in names:
        check_link_target(source, name)
        check_file_type(source / name)
        if not (folder / name).exists():  # what save_pretrained just wrote (the EMA teacher, for one) wins
            shutil.copyfile(source / name, folder / name)
    return names


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two saved model folders hold the same tensors (names, dtypes, values), read one tensor at a time."""

    def files(folder: Path) -> dict[str, Path] | None:
        """tensor name -> the file holding it"""
        names = weight_files(folder)
        if names is None:
            return None
        located = {}
        for name in names:
            with safe_open(str(folder / name), "pt") as f:
                located.update(dict.fromkeys(f.keys(), folder / name))
        return located

    try:
        left, right = files(a), files(b)
        if left is None or right is None or set(left) != set(right):
            return False
        for key in left:
            with safe_open(str(left[key]), "pt") as f, safe_open(str(right[key]), "pt") as g:
                x, y = f.get_tensor(key), g.get_tensor(key)
            if x.dtype != y.dtype or x.shape != y.shape or not bool((x == y).all()):
                return False
    except (OSError, ValueError, SafetensorError):
        return False
    return True


def base_model_of(config) -> str | None:
    """The Hub id a classification model was loaded from (transformers records it as `_name_or_path`), for the
    card's `base_model`; None for pretraining models, local folders and anything that is not a repo id."""
    if not (config.architectures or [""])[0].endswith("ForImageClassification"):
        return None
    source = getattr(config, "_name_or_path", "") or ""
    if not source or os.path.exists(source):
        return None
    try:
        return check_repo_id(source)
    except ValueError:
        return None


def _write_card_on_save(model, folder) -> None:
    card = model_card_for_folder(folder, config=model.config, base_model=base_model_of(model.config))
    write_model_card(folder, card)


_base.HUB_HOOKS["save"] = _write_card_on_save
_base.HUB_HOOKS["push"] = push_model

__all__ = [
    "check_file_type",
    "check_link_target",
    "check_loads",
    "files_to_upload",
    "push_folder",
    "push_model",
    "base_model_of",
    "carry_run_records",
]
