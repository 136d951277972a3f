"""hf_mim's data layer: where images come from (`sources`, `labelled`, `streaming`), what is done to each one
(`images`), and the one per-sample pipeline that `hf-mim pretrain`, `transformers.Trainer` (`ImageTransform`) and
evaluation share (`pipeline`)."""

from .images import ImageAugmentation, open_image
from .labelled import LabelledSplits, labels_per_class_subset, load_labelled_splits
from .pipeline import INDEX_COLUMN, ImageTransform, SamplePipeline, sample_generator, settle
from .sources import BUILTIN_DATASET, SOURCES, builtin_digits, find_image_column, load_pretraining_dataset

__all__ = [
    "BUILTIN_DATASET",
    "INDEX_COLUMN",
    "SOURCES",
    "ImageAugmentation",
    "ImageTransform",
    "LabelledSplits",
    "SamplePipeline",
    "builtin_digits",
    "find_image_column",
    "labels_per_class_subset",
    "load_labelled_splits",
    "load_pretraining_dataset",
    "open_image",
    "sample_generator",
    "settle",
]
