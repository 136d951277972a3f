"""Labelled data for evaluation: a train and a test split, the label column, the low-label subset, and batches.

The image decoding and resizing are the pretraining pipeline's (`ImageAugmentation`, `open_image`); an image that
cannot be decoded is skipped, named in the log and counted, never fatal, and never leaves a rank waiting: its batch
keeps its shape (a good image of the batch takes its place) and a `valid` flag drops it after the gather.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import torch

from ..training.data import (
    INDEX_COLUMN,
    DatasetError,
    _first_line,
    find_column,
    find_image_column,
    hub_dataset_id,
    load_pretraining_dataset,
    sample_generator,
)
from ..training.transforms import ImageAugmentation, open_image

logger = logging.getLogger(__name__)

_LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target")
_TEST_SPLIT_NAMES = ("test", "validation", "val", "valid")


@dataclass
class LabelledSplits:
    """What a protocol needs of a labelled dataset."""

    train: datasets.Dataset
    test: datasets.Dataset
    image_column: str
    label_column: str
    label_names: list[str]
    description: str
    dataset_id: str | None
    test_split: str

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def find_label_column(dataset: datasets.Dataset, requested: str | None = None) -> str:
    return find_column(dataset, requested, "label-column", datasets.ClassLabel, _LABEL_COLUMN_NAMES)


def _as_class_labels(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    feature = dataset.features[column]
    unlabelled = sum(1 for v in dataset[column] if v is None or (isinstance(v, int) and v < 0))
    if unlabelled:
        raise DatasetError(
            f"label column {column!r} has {unlabelled} of {len(dataset)} rows without a label (None, or -1 for a "
            "ClassLabel); allowed: a label on every row (drop the unlabelled rows first)"
        )
    if isinstance(feature, datasets.ClassLabel):
        return dataset
    if not isinstance(feature, datasets.Value) or not (
        feature.dtype.startswith(("int", "uint")) or feature.dtype == "string"
    ):
        raise DatasetError(f"label column {column!r} has type {feature}; expected integer or string class labels")
    return dataset.class_encode_column(column)


def load_labelled_splits(
    name: str | None = None,
    config_name: str | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> LabelledSplits:
    """Resolve `--dataset` as `hf-mim pretrain` does and return its train and test splits.

    The test split is `test_split`, else the first of test / validation / val / valid the dataset has (the
    built-in digits has "test", the 360 images `hf-mim pretrain` never trains on); a dataset with none (an image
    folder, a saved dataset of one split) is split here, `test_size` of it held out, stratified by label and
    seeded, so every run and every process holds out the same images."""
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size={test_size!r} is invalid: must lie strictly between 0 and 1")
    train, description = load_pretraining_dataset(name, config_name, train_split)
    test, test_name = None, test_split
    # strict: a folder of one saved split must not answer "test" with the training images
    if test_split is not None:
        test, _ = load_pretraining_dataset(name, config_name, test_split, strict_split=True)
    else:
        for candidate in _TEST_SPLIT_NAMES:
            try:
                test, _ = load_pretraining_dataset(name, config_name, candidate, strict_split=True)
            except (DatasetError, ValueError, KeyError):
                continue
            test_name = candidate
            break
    column = find_label_column(train, label_column)
    image_column = find_image_column(train, image_column)
    train = _as_class_labels(train, column)
    if test is None:
        parts = train.train_test_split(test_size=test_size, seed=seed, stratify_by_column=column)
        train, test, test_name = parts["train"], parts["test"], "test"
        description = f"{description}, {test_size:.0%} of {train_split!r} held out for test (stratified, seed {seed})"
    else:
        test = _as_class_labels(test, column)
        if test.features[column].names != train.features[column].names:
            raise DatasetError(
                f"the {train_split!r} and {test_name!r} splits label classes differently: "
                f"{train.features[column].names[:10]} vs {test.features[column].names[:10]}"
            )
    for split, part in (("train", train), ("test", test)):
        if len(part) == 0:
            raise DatasetError(f"the {split} split of {description} is empty")
    present = sorted(set(train[column]))
    if len(present) < 2:
        # every protocol would score 100% whatever the features are
        raise DatasetError(
            f"label column {column!r} of {description} holds {len(present)} class; allowed: at least 2 classes"
        )
    return LabelledSplits(
        train=train,
        test=test,
        image_column=image_column,
        label_column=column,
        label_names=list(train.features[column].names),
        description=description,
        dataset_id=hub_dataset_id(name),
        test_split=test_name,
    )


def labels_per_class_subset(
    dataset: datasets.Dataset, label_column: str, labels_per_class: int, seed: int = 0
) -> datasets.Dataset:
    """The low-label setting: `labels_per_class` images of every class, drawn without replacement from `seed`.
    A class with fewer images is an error naming it, not a silently smaller subset."""
    if not isinstance(labels_per_class, int) or isinstance(labels_per_class, bool) or labels_per_class < 1:
        raise ValueError(f"labels_per_class={labels_per_class!r} is invalid: must be a positive integer")
    labels = torch.tensor(dataset[label_column])
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        if len(members) < labels_per_class:
            raise ValueError(
                f"labels_per_class={labels_per_class} is invalid: class {cls} has only {len(members)} training "
                "images; allowed: at most the size of the smallest class"
            )
        chosen += members[torch.randperm(len(members), generator=generator)[:labels_per_class]].tolist()
    return dataset.select(sorted(chosen))


@dataclass
class LabelledTransform:
    """`with_transform` for evaluation: decoded, resized (or augmented, for fine-tuning) and normalised images
    with their labels; undecodable images flagged in `error`.

    With `seed=None` (fine-tuning) augmentations come from the global RNG, so every epoch draws new ones; Trainer
    seeds it (and each DataLoader worker's) from its own seed, so a run is still reproducible. A per-sample seed
    would give each image the same crop in every epoch, and the model would learn those crops by heart."""

    image_column: str
    label_column: str
    transform: ImageAugmentation
    seed: int | None = 0

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"pixel_values": [], "labels": [], "index": [], "error": [], "name": []}
        for value, label, index in zip(
            batch[self.image_column], batch[self.label_column], batch[INDEX_COLUMN], strict=True
        ):
            try:
                # one pass (features) or the global RNG (fine-tuning): no epoch in the seed
                generator = None if self.seed is None else sample_generator(self.seed, 0, int(index))
                pixels, error = self.transform(open_image(value), generator), None
            except Exception as err:  # any undecodable input is skipped, whatever the decoder raised
                pixels, error = None, f"{type(err).__name__}: {_first_line(err)}"
            out["pixel_values"].append(pixels)
            out["labels"].append(int(label))
            out["index"].append(int(index))
            out["error"].append(error)
            out["name"].append(value.get("path") if isinstance(value, dict) and value.get("path") else f"#{index}")
        return out


def prepare_labelled(dataset: datasets.Dataset, transform: LabelledTransform) -> datasets.Dataset:
    dataset = dataset.select_columns([transform.image_column, transform.label_column])
    if isinstance(dataset.features[transform.image_column], datasets.Image):
        dataset = dataset.cast_column(transform.image_column, datasets.Image(decode=False))
    dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    return dataset.with_transform(transform)


@dataclass
class KeepShapeCollator:
    """Stack a batch for feature extraction. An undecodable image is replaced by a good one of the batch and flagged
    `valid=False`, to be dropped after the gather: every process runs the same batches, so none waits on another.
    `pixel_shape` (C, H, W) shapes the zero images of a batch where nothing decodes."""

    pixel_shape: tuple[int, int, int]

    def __call__(self, items: list[dict]) -> dict:
        good = [i for i, item in enumerate(items) if item["error"] is None]
        for item in items:
            if item["error"] is not None:
                logger.warning("skipped %s: %s", item["name"], item["error"])
        source = [i if not good or items[i]["error"] is None else good[i % len(good)] for i in range(len(items))]
        return {
            "pixel_values": torch.stack([items[j]["pixel_values"] for j in source])
            if good
            else torch.zeros(len(items), *self.pixel_shape),
            "labels": torch.tensor([items[j]["labels"] for j in source]),
            "index": torch.tensor([items[j]["index"] for j in source]),
            "valid": torch.tensor([item["error"] is None for item in items]),
        }


def collate_drop_bad(items: list[dict]) -> dict:
    """Stack a batch for `transformers.Trainer`, leaving out (and logging) undecodable images."""
    good = [item for item in items if item["error"] is None]
    for item in items:
        if item["error"] is not None:
            logger.warning("skipped %s: %s", item["name"], item["error"])
    if not good:
        raise DatasetError(f"no image of a batch could be decoded: {[item['name'] for item in items]}")
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in good]),
        "labels": torch.tensor([item["labels"] for item in good]),
    }


__all__ = [
    "LabelledSplits",
    "LabelledTransform",
    "collate_drop_bad",
    "KeepShapeCollator",
    "find_label_column",
    "labels_per_class_subset",
    "load_labelled_splits",
    "prepare_labelled",
]
