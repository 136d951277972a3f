"""Where images come from: `--dataset` resolved to a `datasets` split, the built-in digits, data shards, and the
columns that hold images.

`SOURCES` lists every kind of `--dataset` in the order they are tried; each kind says whether it claims a name and
how to read it. A new kind of data is one more entry here: the pretraining run, `MIMTrainer`'s helpers, evaluation
and the pictures all resolve `--dataset` through `load_pretraining_dataset`.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ..errors import DatasetError, one_line
from ..names import looks_like_path, shown_name
from .images import displayed_size, open_image

logger = logging.getLogger(__name__)

# Column names taken for the image column when a batch has several candidates (the `datasets` conventions).
IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "pixel_values")

BUILTIN_DATASET = "digits"


#: The built-in dataset's splits: a fixed, stratified 80/20 cut, so that pretraining on "train" (the default split)
#: never sees the images `hf-mim evaluate` reports on ("test").
BUILTIN_SPLITS = {"train": 1437, "test": 360}
_BUILTIN_TEST_FRACTION, _BUILTIN_SPLIT_SEED = 0.2, 0


def builtin_digits(split: str | None = "train") -> datasets.Dataset:
    """scikit-learn's digits (UCI optical recognition of handwritten digits): 1,797 labelled 8x8 greyscale images
    with 17 grey levels, shipped inside the scikit-learn package, so available offline.

    `split`: "train" (1,437 images) or "test" (360), a stratified cut with a fixed seed, the same on every machine;
    None gives all 1,797. No image occurs twice in the data, so the two splits share no image."""
    from sklearn.datasets import load_digits  # scikit-learn: imported only when the built-in data is asked for

    if split is not None and split not in BUILTIN_SPLITS:
        raise DatasetError(
            f"the built-in dataset {BUILTIN_DATASET!r} has splits {sorted(BUILTIN_SPLITS)}, not {split!r}"
        )
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()},
        features=features,
    )
    if split is None:
        return full
    parts = full.train_test_split(
        test_size=_BUILTIN_TEST_FRACTION, seed=_BUILTIN_SPLIT_SEED, stratify_by_column="label"
    )
    return parts[split]


def hub_dataset_id(name: str | None) -> str | None:
    """`--dataset` when it names a Hub dataset (for the model card's `datasets`), else None."""
    if not name or name == BUILTIN_DATASET or os.path.exists(os.path.expanduser(name)) or looks_like_path(name):
        return None
    return name


def load_pretraining_dataset(
    name: str | None = None,
    config_name: str | None = None,
    split: str = "train",
    strict_split: bool = False,
    streaming: bool = False,
) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """Resolve `--dataset`: the built-in name (default), a local image folder, a folder written by
    `save_to_disk`, a folder or glob of data shards (WebDataset tar, parquet, arrow), or a Hub dataset id. Returns
    the split and a short description for logs and cards.

    A folder holding one saved `Dataset` (not a `DatasetDict`) is that one split whatever `split` says, unless
    `strict_split`: then it is only the split it was saved as ("train" when it recorded none), which is how an
    evaluation looks for a test split without testing on the training images.

    `streaming`: an `IterableDataset`, read while training. Shards and Hub ids are streamed by `datasets`; data it
    holds in memory or prepares on disk (the built-in digits, an image folder, a saved dataset) is cut into
    `MAP_STYLE_SHARDS` shards."""
    dataset, description = _load(name, config_name, split, strict_split, streaming)
    if streaming and isinstance(dataset, datasets.Dataset):
        shards = max(1, min(MAP_STYLE_SHARDS, len(dataset)))
        return dataset.to_iterable_dataset(num_shards=shards), f"{description}, streamed from {shards} shards"
    return dataset, description


#: Shards a map-style dataset (the built-in digits, an image folder, a saved dataset) is cut into when streamed.
MAP_STYLE_SHARDS = 16


@dataclass(frozen=True)
class Request:
    """What `load_pretraining_dataset` was asked for. `path` is `name` with `~` expanded; `shown` is how logs and
    records name it (a local path's last part, never the path)."""

    name: str
    config_name: str | None
    split: str
    strict_split: bool
    streaming: bool

    @property
    def path(self) -> str:
        return os.path.expanduser(self.name)

    @property
    def shown(self) -> str:
        return shown_name(self.name) if os.path.exists(self.path) or looks_like_path(self.name) else self.name


@dataclass(frozen=True)
class Source:
    """One kind of `--dataset`: `claims(request)` says whether a name is of this kind; `load(request)` returns
    (the split, its description) or raises `DatasetError`."""

    kind: str
    claims: Callable[[Request], bool]
    load: Callable[[Request], tuple]


def _load_builtin(request: Request):
    return builtin_digits(request.split), f"scikit-learn digits (built in), {request.split!r} split"


def _load_shards(request: Request):
    builder, files = local_data_files(request.path)
    files, damaged = readable_shards(builder, files)
    description = f"{request.shown} ({len(files)} {builder} files{', streamed' if request.streaming else ''})"
    if damaged:
        description = description[:-1] + f"; {len(damaged)} damaged, skipped: {', '.join(damaged)})"
    try:
        loaded = datasets.load_dataset(builder, data_files=files, split="train", streaming=request.streaming)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as err:
        cause = err.__cause__ or err
        raise DatasetError(f"could not read the {builder} files {request.name}: {one_line(cause)}") from None
    return loaded, description


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in _SAVED_DATASET_FILES)


def _load_saved(request: Request):
    name, split = request.name, request.split
    try:
        loaded = datasets.load_from_disk(request.path)
    except (IndexError, ValueError, FileNotFoundError) as err:  # a saved dataset of 0 rows has no shard
        raise DatasetError(f"could not read the saved dataset {name}: empty or damaged ({one_line(err)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{name} has splits {sorted(loaded)}, not {split!r}; pass --split")
        # the record names the split read, so that a summary or a card shows the test images stayed out
        return loaded[split], f"{request.shown} (saved dataset), {split!r} split"
    elif request.strict_split:
        own = str(loaded.split) if loaded.split is not None else "train"
        if split != own:
            raise DatasetError(
                f"{name} holds one split ({own!r}), not {split!r}; save a DatasetDict for several splits"
            )
    return loaded, f"{request.shown} (saved dataset)"


def _load_image_folder(request: Request):
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=request.path, split=request.split)
    except (ValueError, FileNotFoundError) as err:
        raise DatasetError(f"could not read images from {request.name}: {one_line(err)}") from None
    return loaded, f"{request.shown} (image folder)"


def _refuse_file(request: Request):
    raise DatasetError(f"--dataset {request.name} is a file; pass a folder of images, a saved dataset or a Hub id")


def _refuse_missing(request: Request):
    raise DatasetError(f"dataset path not found: {request.name}")


def _load_hub(request: Request):
    name = request.name
    try:
        loaded = datasets.load_dataset(name, request.config_name, split=request.split, streaming=request.streaming)
    except Exception as err:  # the Hub client raises many types; the user needs the first line of any of them
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise DatasetError(
            f"could not load dataset {name!r} from the Hub{offline}: {one_line(err)}. "
            f"For local data pass a folder path; the built-in dataset is {BUILTIN_DATASET!r}"
        ) from None
    return loaded, f"{name} (streamed)" if request.streaming else name


#: Every kind of `--dataset`, in the order they are tried; the first that claims a name reads it.
SOURCES = (
    Source("built-in digits", lambda r: r.name == BUILTIN_DATASET, _load_builtin),
    Source(
        "data shards (a glob or a folder of tar, parquet or arrow files)",
        lambda r: local_data_files(r.path) is not None,
        _load_shards,
    ),  # fmt: skip
    Source("saved dataset (save_to_disk)", lambda r: _is_saved_dataset(r.path), _load_saved),
    Source("image folder", lambda r: os.path.isdir(r.path), _load_image_folder),
    Source("a file (refused)", lambda r: os.path.exists(r.path), _refuse_file),
    Source("a path that does not exist (refused)", lambda r: looks_like_path(r.name), _refuse_missing),
    Source("Hub dataset id", lambda r: True, _load_hub),
)


def _load(name, config_name, split: str, strict_split: bool, streaming: bool):
    request = Request(name or BUILTIN_DATASET, config_name, split, strict_split, streaming)
    source = next(source for source in SOURCES if source.claims(request))
    return source.load(request)


_SAVED_DATASET_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")  # what save_to_disk writes

#: File endings of data shards and the `datasets` builder that reads them (WebDataset: tar files of `jpg`/`png`
#: and `cls` entries, as in timm/imagenet-1k-wds).
SHARD_BUILDERS = {".tar": "webdataset", ".parquet": "parquet", ".arrow": "arrow"}


def local_data_files(path: str) -> tuple[str, list[str]] | None:
    """(builder, files) when `path` is a glob (`shards/train-*.tar`) or a folder of data shards (tar, parquet or
    arrow files, all of one kind, not an image folder or a `save_to_disk` folder); None when it is neither."""
    if glob.has_magic(path):
        files = sorted(glob.glob(path))
        if not files:
            raise DatasetError(f"--dataset {path}: no file matches the pattern")
    elif os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in _SAVED_DATASET_FILES):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if os.path.splitext(f)[1] in SHARD_BUILDERS)
        if not files:
            return None
    else:
        return None
    kinds = {os.path.splitext(f)[1] for f in files}
    if len(kinds) != 1 or next(iter(kinds)) not in SHARD_BUILDERS:
        raise DatasetError(
            f"--dataset {path}: the files must all be of one kind, {' or '.join(SHARD_BUILDERS)}; found {sorted(kinds)}"
        )
    return SHARD_BUILDERS[kinds.pop()], files


def shard_problem(builder: str, path: str) -> str | None:
    """Why a data shard cannot be read whole (truncated, not of its format), or None. Reads the parquet footer and
    checks every column chunk lies inside the file; the arrow file's record batches; a tar file's first header and
    its end-of-archive blocks. Nothing is decoded."""
    size = os.path.getsize(path)
    try:
        if builder == "parquet":
            metadata = pq.ParquetFile(path).metadata
            for g in range(metadata.num_row_groups):
                group = metadata.row_group(g)
                for c in range(group.num_columns):
                    column = group.column(c)
                    start = column.dictionary_page_offset or column.data_page_offset
                    if start + column.total_compressed_size > size:
                        return f"row group {g} runs past the end of the file (truncated)"
        elif builder == "arrow":
            with pa.memory_map(path) as source:
                try:
                    reader = pa.ipc.open_stream(source)
                except pa.ArrowInvalid:
                    source.seek(0)
                    reader = pa.ipc.open_file(source)
                    for i in range(reader.num_record_batches):
                        reader.get_batch(i)
                else:
                    for _ in reader:
                        pass
        elif builder == "webdataset":
            with tarfile.open(path, "r:") as tar:  # its first header: a tar file at all
                if tar.next() is None:
                    return "no members"
            # A whole archive ends in zero blocks (two at least, padded to its record size); a cut-off one ends in a
            # member's data or header, where tarfile would stop quietly or fail mid-epoch. The tail alone tells
            # them apart: no scan of every header (1.28 M of them for ImageNet) before a run starts.
            with open(path, "rb") as f:
                f.seek(max(0, size - 2 * tarfile.BLOCKSIZE))
                tail = f.read()
            if size % tarfile.BLOCKSIZE or len(tail) < 2 * tarfile.BLOCKSIZE or tail.strip(b"\0"):
                return "it does not end in the end-of-archive blocks (truncated)"
    except Exception as err:  # noqa: BLE001 - pyarrow and tarfile raise their own types for a damaged file
        return one_line(err)
    return None


def readable_shards(builder: str, files: list[str]) -> tuple[list[str], list[str]]:
    """(readable files, names of the damaged ones): each damaged shard is logged by name and skipped, so one bad
    file among many does not stop a run; a DatasetError when none is readable."""
    good, damaged = [], []
    for path in files:
        problem = shard_problem(builder, path)
        if problem is None:
            good.append(path)
        else:
            logger.warning("skipping damaged %s shard %s: %s", builder, path, problem)
            damaged.append(os.path.basename(path))
    if not good:
        raise DatasetError(f"every {builder} shard is damaged: {', '.join(damaged[:5])} ({len(damaged)} files)")
    return good, damaged


def find_column(
    dataset: datasets.Dataset, requested: str | None, flag: str, feature_type: type, names: tuple[str, ...]
) -> str:
    """`requested` if it is a column; else the first column whose feature is a `feature_type`, else the first of
    `names` present. A DatasetError names `--flag` and lists the columns otherwise."""
    columns = list(dataset.column_names)
    if requested is not None:
        if requested not in columns:
            raise DatasetError(f"--{flag} {requested!r} is not a column; the columns are {columns}")
        return requested
    typed = [c for c in columns if isinstance(dataset.features[c], feature_type)]
    if typed:
        return typed[0]
    for candidate in names:
        if candidate in columns:
            return candidate
    what = flag.removesuffix("-column")
    raise DatasetError(f"found no {what} column; the columns are {columns}. Pass --{flag}")


def find_image_column(dataset: datasets.Dataset, requested: str | None = None) -> str:
    return find_column(dataset, requested, "image-column", datasets.Image, IMAGE_COLUMN_NAMES)


def sample_image_sizes(dataset, image_column: str, count: int = 64) -> list[tuple[int, int]]:
    """(width, height) of up to `count` images, read from their headers: spread evenly over a dataset, the first ones
    of a stream. Images that cannot be opened are left out (training skips them too)."""
    if isinstance(dataset, datasets.IterableDataset):
        rows = itertools.islice(dataset.decode(False), count)
    else:
        total = len(dataset)
        taken = min(count, total)
        indices = sorted({round(i * (total - 1) / max(1, taken - 1)) for i in range(taken)})
        rows = undecoded(dataset.select_columns([image_column])).select(indices)
    sizes = []
    for row in rows:
        try:
            sizes.append(displayed_size(open_image(row[image_column], load=False)))
        except Exception:  # noqa: BLE001 - a bad file is skipped in training as well
            continue
    return sizes


def check_size(dataset: datasets.Dataset, num_processes: int, description: str) -> None:
    if len(dataset) == 0:
        raise DatasetError(f"the dataset {description} is empty")
    if len(dataset) < num_processes:
        raise DatasetError(
            f"the dataset {description} has {len(dataset)} samples, fewer than the {num_processes} processes"
        )


def undecoded(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with its Image columns read as bytes or paths, for our own decoder, which can skip a bad file."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


__all__ = [
    "BUILTIN_DATASET",
    "BUILTIN_SPLITS",
    "IMAGE_COLUMN_NAMES",
    "MAP_STYLE_SHARDS",
    "SHARD_BUILDERS",
    "SOURCES",
    "Request",
    "Source",
    "builtin_digits",
    "check_size",
    "find_column",
    "find_image_column",
    "hub_dataset_id",
    "load_pretraining_dataset",
    "local_data_files",
    "readable_shards",
    "sample_image_sizes",
    "shard_problem",
    "undecoded",
]
