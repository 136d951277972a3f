"""Labelled data for evaluation: a train and a test split of any `--dataset`, the label column, and the
low-label subset. Its images go through the one per-sample pipeline (`hf_mim.data.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import torch

from ..errors import DatasetError
from .sources import find_column, find_image_column, hub_dataset_id, load_pretraining_dataset

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


__all__ = [
    "LabelledSplits",
    "find_label_column",
    "labels_per_class_subset",
    "load_labelled_splits",
]
