"""Datasets for pretraining: resolution of `--dataset`, the embedded default, and a loader that survives bad files.

Design points:
- Decoding and augmentation run lazily in `with_transform`, in the DataLoader's workers. The image column is cast
  to `Image(decode=False)` so that a corrupt file reaches our own decoder (which can skip it) instead of raising
  inside `datasets`.
- Each sample's randomness (crop, flip, the method's masking noise) comes from a generator seeded with
  (seed, epoch, sample index). The data a run sees is therefore the same for any number of workers or processes,
  and after a resume.
- A sample that cannot be decoded is replaced in its batch by a good one, so every batch keeps its shape and
  every process takes part in every step (no rank waits on another). A batch with no good sample at all gets
  `loss_weight` 0. The names of skipped files travel with the batch for the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import datasets
import torch

from .transforms import (
    IMAGE_COLUMN_NAMES,
    INDEX_COLUMN,
    ImageAugmentation,
    displayed_size,
    open_image,
    sample_generator,
)

logger = logging.getLogger(__name__)

BUILTIN_DATASET = "digits"


class DatasetError(ValueError):
    """A dataset problem found before training, with a message meant to be shown as is."""


#: The built-in dataset's splits: a fixed, stratified 80/20 cut, so that pretraining on "train" (the default split)
#: never sees the images `hf-mim evaluate` reports on ("test").
BUILTIN_SPLITS = {"train": 1437, "test": 360}
_BUILTIN_TEST_FRACTION, _BUILTIN_SPLIT_SEED = 0.2, 0


def builtin_digits(split: str | None = "train") -> datasets.Dataset:
    """scikit-learn's digits (UCI optical recognition of handwritten digits): 1,797 labelled 8x8 greyscale images
    with 17 grey levels, shipped inside the scikit-learn package, so available offline.

    `split`: "train" (1,437 images) or "test" (360), a stratified cut with a fixed seed, the same on every machine;
    None gives all 1,797. No image occurs twice in the data, so the two splits share no image."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

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


def looks_like_path(name: str) -> bool:
    # A Hub id has at most one "/"; anything else path-like is a local path that does not exist.
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or any(c in name for c in "*?[")  # a glob of data files
    )


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


def shown_name(name: str) -> str:
    """How records, logs of the run and model cards name a local dataset: its folder's or file's name, never the
    path (a pushed card would show the uploader's folders); a glob keeps its pattern after the folder's name."""
    path = os.path.abspath(os.path.expanduser(name))
    if any(c in os.path.basename(path) for c in "*?["):
        return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
    return os.path.basename(path.rstrip(os.sep)) or name


def _load(name, config_name, split: str, strict_split: bool, streaming: bool):
    name = name or BUILTIN_DATASET
    if name == BUILTIN_DATASET:
        return builtin_digits(split), f"scikit-learn digits (built in), {split!r} split"
    path = os.path.expanduser(name)
    shown = shown_name(name) if os.path.exists(path) or looks_like_path(name) else name  # else a Hub id
    shards = local_data_files(path)
    if shards is not None:
        builder, files = shards
        files, damaged = readable_shards(builder, files)
        description = f"{shown} ({len(files)} {builder} files{', streamed' if streaming else ''})"
        if damaged:
            description = description[:-1] + f"; {len(damaged)} damaged, skipped: {', '.join(damaged)})"
        try:
            return datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming), description
        except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as err:
            cause = err.__cause__ or err
            raise DatasetError(f"could not read the {builder} files {name}: {_first_line(cause)}") from None
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in _SAVED_DATASET_FILES):
            try:
                loaded = datasets.load_from_disk(path)
            except (IndexError, ValueError, FileNotFoundError) as err:  # a saved dataset of 0 rows has no shard
                raise DatasetError(
                    f"could not read the saved dataset {name}: empty or damaged ({_first_line(err)})"
                ) from None
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DatasetError(f"{name} has splits {sorted(loaded)}, not {split!r}; pass --split")
                loaded = loaded[split]
            elif strict_split:
                own = str(loaded.split) if loaded.split is not None else "train"
                if split != own:
                    raise DatasetError(
                        f"{name} holds one split ({own!r}), not {split!r}; save a DatasetDict for several splits"
                    )
            return loaded, f"{shown} (saved dataset)"
        try:
            return datasets.load_dataset("imagefolder", data_dir=path, split=split), f"{shown} (image folder)"
        except (ValueError, FileNotFoundError) as err:
            raise DatasetError(f"could not read images from {name}: {_first_line(err)}") from None
    if os.path.exists(path):
        raise DatasetError(f"--dataset {name} is a file; pass a folder of images, a saved dataset or a Hub id")
    if looks_like_path(name):
        raise DatasetError(f"dataset path not found: {name}")
    try:
        loaded = datasets.load_dataset(name, config_name, split=split, streaming=streaming)
        return loaded, f"{name} (streamed)" if streaming else name
    except Exception as err:  # the Hub client raises many types; the user needs the first line of any of them
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise DatasetError(
            f"could not load dataset {name!r} from the Hub{offline}: {_first_line(err)}. "
            f"For local data pass a folder path; the built-in dataset is {BUILTIN_DATASET!r}"
        ) from None


_SAVED_DATASET_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")  # what save_to_disk writes

#: File endings of data shards and the `datasets` builder that reads them (WebDataset: tar files of `jpg`/`png`
#: and `cls` entries, as in timm/imagenet-1k-wds).
SHARD_BUILDERS = {".tar": "webdataset", ".parquet": "parquet", ".arrow": "arrow"}


def local_data_files(path: str) -> tuple[str, list[str]] | None:
    """(builder, files) when `path` is a glob (`shards/train-*.tar`) or a folder of data shards (tar, parquet or
    arrow files, all of one kind, not an image folder or a `save_to_disk` folder); None when it is neither."""
    import glob

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
            import pyarrow.parquet as pq

            metadata = pq.ParquetFile(path).metadata
            for g in range(metadata.num_row_groups):
                group = metadata.row_group(g)
                for c in range(group.num_columns):
                    column = group.column(c)
                    start = column.dictionary_page_offset or column.data_page_offset
                    if start + column.total_compressed_size > size:
                        return f"row group {g} runs past the end of the file (truncated)"
        elif builder == "arrow":
            import pyarrow as pa

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
            import tarfile

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
        return _first_line(err)
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


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
        import itertools

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


@dataclass
class PretrainingTransform:
    """The `with_transform` function: decode, augment and draw per-sample extras (e.g. MAE's noise)."""

    image_column: str
    augment: ImageAugmentation
    seed: int
    extras: Callable[[torch.Generator], dict[str, torch.Tensor]] | None = None
    epoch: int = 0
    # False: uint8 crops, normalised later on the device (`ImageAugmentation.normalize`), as hf-mim pretrain does
    normalize: bool = True

    def __call__(self, batch: dict) -> dict:
        items = [self.sample(v, int(i)) for v, i in zip(batch[self.image_column], batch[INDEX_COLUMN], strict=True)]
        return {key: [item[key] for item in items] for key in items[0]} if items else {}

    def sample(self, value, index: int, epoch: int | None = None, name: str | None = None) -> dict:
        """One sample: pixel_values (None if it does not decode), error, name, and the method's per-sample inputs,
        every draw from the generator of (seed, epoch, index)."""
        generator = sample_generator(self.seed, self.epoch if epoch is None else epoch, index)
        try:
            augment = self.augment if self.normalize else self.augment.crop
            pixels, error = augment(open_image(value, load=False), generator), None
        except Exception as err:  # any undecodable input is skipped, whatever the decoder raised
            pixels, error = None, f"{type(err).__name__}: {_first_line(err)}"
        item = {"pixel_values": pixels, "error": error, "name": name or _describe(value, index)}
        return {**item, **(self.extras(generator) if self.extras else {})}


def _describe(value, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return os.path.basename(value["path"])
    return f"sample {index}"


def undecoded(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with its Image columns read as bytes or paths, for our own decoder, which can skip a bad file."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def prepare_dataset(dataset: datasets.Dataset, image_column: str, transform: PretrainingTransform) -> datasets.Dataset:
    keep = [image_column]
    dataset = undecoded(dataset.select_columns(keep))
    dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    return dataset.with_transform(transform)


@dataclass
class SkipReport:
    """Files skipped so far on this process: name -> reason."""

    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, names: list[str], errors: list[str]) -> list[str]:
        new = [n for n in names if n not in self.skipped]
        self.skipped.update(zip(names, errors, strict=True))
        return new


@dataclass
class Collator:
    """Stack a batch, replacing undecodable samples by good ones of the same batch (see the module docstring).
    `pixel_shape` (C, H, W) shapes the zero batch used when no sample of a batch decodes."""

    pixel_shape: tuple[int, int, int]
    dtype: torch.dtype = torch.float32

    def __call__(self, items: list[dict]) -> dict:
        good = [i for i, item in enumerate(items) if item["error"] is None]
        bad = [i for i, item in enumerate(items) if item["error"] is not None]
        batch: dict = {
            "skipped_names": [items[i]["name"] for i in bad],
            "skipped_errors": [items[i]["error"] for i in bad],
            "loss_weight": torch.tensor(1.0 if good else 0.0),
        }
        # each bad sample takes the place of a good one, cycling through them; with no good one, keep the indices
        source = [i if not good or items[i]["error"] is None else good[i % len(good)] for i in range(len(items))]
        if good:
            batch["pixel_values"] = torch.stack([items[j]["pixel_values"] for j in source])
        else:
            batch["pixel_values"] = torch.zeros(len(items), *self.pixel_shape, dtype=self.dtype)
        if "stream_position" in items[0]:  # streaming: where the worker's stream stands after this batch
            batch["stream_position"] = torch.tensor(items[-1]["stream_position"])
        for key in items[0]:
            if key not in ("pixel_values", "error", "name", "stream_position"):
                batch[key] = torch.stack([items[j][key] for j in source])
        return batch


__all__ = [
    "BUILTIN_DATASET",
    "DatasetError",
    "PretrainingTransform",
    "SkipReport",
    "BUILTIN_SPLITS",
    "builtin_digits",
    "check_size",
    "Collator",
    "find_column",
    "find_image_column",
    "load_pretraining_dataset",
    "MAP_STYLE_SHARDS",
    "looks_like_path",
    "prepare_dataset",
    "sample_image_sizes",
    "shown_name",
    "sample_generator",
    "undecoded",
]
