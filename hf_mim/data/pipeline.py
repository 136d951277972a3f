"""The one per-sample pipeline, and the thin adapters that feed it to `hf-mim pretrain`, `transformers.Trainer` and
evaluation.

`SamplePipeline.sample(value, index)` is everything hf_mim does to one image: open it (a bad file becomes an
`error`, never an exception), crop, flip and normalise it (`ImageAugmentation`), and draw the method's per-sample
inputs (MAE's noise, SimMIM's and BEiT's masks, C-MAE's views, from its `MethodSpec.sample_inputs`). Every draw comes
from the generator of (seed, epoch, sample index), so the data a run sees is the same for any number of workers or
processes, and after a resume.

What happens to a sample that did not decode is one parameter, `on_bad` of `settle`:
- "replace": a good sample of the same batch takes its place, so every batch keeps its shape and every process takes
  part in every step (no rank waits on another in a collective). `hf-mim pretrain` (a batch with no good sample
  gets `loss_weight` 0), `ImageTransform` under Trainer, and feature extraction (which flags the row `valid=False`
  and drops it after the gather) use it.
- "drop": it is left out of its batch; fine-tuning under Trainer, whose batches may change size, uses it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import datasets
import torch
from PIL import Image

from ..errors import DatasetError, one_line
from ..modeling.auto import SPECS_BY_MODEL_TYPE
from ..modeling.backbone import patch_grid
from .images import ImageAugmentation, open_image
from .sources import IMAGE_COLUMN_NAMES, undecoded

logger = logging.getLogger(__name__)

#: The column of sample indices that seeds each sample's draws (added by `with_sample_index`).
INDEX_COLUMN = "__hf_mim_index__"

#: What `settle` does with a sample that did not decode.
REPLACE, DROP = "replace", "drop"
BAD_IMAGE_POLICIES = (REPLACE, DROP)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample's random draws in one epoch: the same for any worker count, process count or
    resume point."""
    # A large odd multiplier keeps nearby (epoch, index) pairs from sharing seeds.
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 2_147_483_659 + index)


def sample_name(value, index: int) -> str:
    """How logs and records name a sample: its file's name (never the folder it lies in), else its index."""
    if isinstance(value, dict) and value.get("path"):
        return os.path.basename(value["path"])
    if isinstance(value, str):
        return os.path.basename(value)
    return f"sample {index}"


def method_sample_inputs(config, spec=None) -> Callable[[torch.Generator], dict] | None:
    """`sample_inputs(generator) -> {name: tensor}` of one image for a model of `config`, from its method's
    `MethodSpec.sample_inputs` at the config's patch grid; None for a method that needs none."""
    spec = spec or SPECS_BY_MODEL_TYPE.get(getattr(config, "model_type", None))
    if spec is None:
        raise ValueError(
            f"config of model_type={getattr(config, 'model_type', None)!r} is not an hf_mim method's; allowed: "
            f"{sorted(SPECS_BY_MODEL_TYPE)}"
        )
    return partial(spec.sample_inputs, config, patch_grid(config)) if spec.sample_inputs else None


@dataclass
class SamplePipeline:
    """One image to what a model takes, and, as a `with_transform` function, a batch of them.

    Args:
        image_column: the column `__call__` reads the images from (adapters that find it per batch pass None).
        augment: the image's augmentation; with `train=False` it resizes and normalises only.
        seed: the seed of the per-sample generators; None draws from torch's global RNG instead (fine-tuning, whose
            crops must differ in every epoch: a per-sample seed would give each image the same crop every time).
        sample_inputs: `sample_inputs(generator) -> {name: tensor}`, the method's random inputs of one image
            (`method_sample_inputs`), drawn after the augmentation from the same generator.
        epoch: the epoch in the generators' seed (the training loop sets it).
        normalize: False ships uint8 crops, normalised later on the device (`ImageAugmentation.normalize`), as
            `hf-mim pretrain` does.
        decode_lazily: True reads the header only and lets the augmentation decode (a JPEG at a reduced scale where
            the crop allows, `draft_for_crop`); False decodes the whole image first (evaluation).
    """

    image_column: str | None
    augment: ImageAugmentation
    seed: int | None = 0
    sample_inputs: Callable[[torch.Generator], dict[str, torch.Tensor]] | None = None
    epoch: int = 0
    normalize: bool = True
    decode_lazily: bool = True

    @classmethod
    def for_config(
        cls, config, image_column: str | None, seed: int = 0, train: bool = True, spec=None, **kwargs
    ) -> SamplePipeline:
        """The pipeline of a model config: its size, channels and normalisation, its method's crop scale and, when
        training, its per-sample inputs."""
        spec = spec or SPECS_BY_MODEL_TYPE.get(getattr(config, "model_type", None))
        inputs = method_sample_inputs(config, spec) if train else None
        augment = ImageAugmentation.from_config(config, train, spec.crop_scale)
        return cls(image_column, augment, seed, inputs, **kwargs)

    def generator(self, index: int, epoch: int | None = None) -> torch.Generator | None:
        if self.seed is None:
            return None
        return sample_generator(self.seed, self.epoch if epoch is None else epoch, index)

    def sample(self, value, index: int, epoch: int | None = None, name: str | None = None, generator=None) -> dict:
        """One sample: pixel_values (None if it does not decode), error (None, or why not), name, and the method's
        per-sample inputs; every draw from `generator`, by default the one of (seed, epoch, index)."""
        if generator is None:
            generator = self.generator(index, epoch)
        try:
            augment = self.augment if self.normalize else self.augment.crop
            pixels, error = augment(open_image(value, load=not self.decode_lazily), generator), None
        except Exception as err:  # any undecodable input is skipped, whatever the decoder raised
            pixels, error = None, f"{type(err).__name__}: {one_line(err)}"
        item = {"pixel_values": pixels, "error": error, "name": name or sample_name(value, index)}
        if self.sample_inputs is not None:
            item.update(self.sample_inputs(generator))
        return item

    def samples(self, values, indices=None) -> list[dict]:
        """`sample` of every value of a batch: the one per-sample loop, which every adapter below runs. Without
        `indices` (a batch without the sample-index column), each sample's generator is seeded from torch's global
        RNG instead, so its draws still follow the run's seed."""
        if indices is None:
            return [
                self.sample(value, i, generator=torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)))))
                for i, value in enumerate(values)
            ]
        return [self.sample(value, int(index)) for value, index in zip(values, indices, strict=True)]

    def first_decoded(self, values, count: int) -> tuple[list[torch.Tensor], list[str]]:
        """The first `count` images of `values` (an iterable of image values) that decode, and why each one before
        them did not: the "drop" policy (`settle`) read lazily, so that no more images are decoded than are needed
        (a model's pictures, `hf-mim visualize`)."""
        kept, skipped = [], []
        for index, value in enumerate(values if count > 0 else ()):
            item = self.sample(value, index)
            if item["error"] is not None:
                skipped.append(f"{item['name']}: {item['error']}")
                continue
            kept.append(item["pixel_values"])
            if len(kept) == count:
                break
        return kept, skipped

    def __call__(self, batch: dict) -> dict:
        """The `with_transform` function of a dataset `with_sample_index` gave: a list of each item's fields."""
        items = self.samples(batch[self.image_column], batch[INDEX_COLUMN])
        return {key: [item[key] for item in items] for key in items[0]} if items else {}


def with_sample_index(dataset: datasets.Dataset, columns: list[str] | None = None) -> datasets.Dataset:
    """`dataset` (only `columns`, if given) with its images read undecoded, so a file that does not decode reaches
    the pipeline, which can skip it, instead of raising inside `datasets`; and with the sample-index column that
    seeds each sample's draws."""
    if columns is not None:
        dataset = dataset.select_columns(columns)
    dataset = undecoded(dataset)
    if INDEX_COLUMN not in dataset.column_names:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    return dataset


def settle(items: list[dict], on_bad: str) -> list[dict]:
    """A batch's items once those that did not decode (`error` set) are dealt with (module docstring): "replace"
    puts the batch's good items in their places, cycling through them; "drop" leaves them out. With no good item,
    "replace" returns the items as they are, and the caller decides (a zero batch, or an error)."""
    if on_bad not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad={on_bad!r} is invalid: allowed {BAD_IMAGE_POLICIES}")
    good = [item for item in items if item["error"] is None]
    if on_bad == DROP:
        return good
    if not good:
        return list(items)
    return [item if item["error"] is None else good[i % len(good)] for i, item in enumerate(items)]


def log_skipped(items: list[dict], consequence: str) -> None:
    for item in items:
        if item["error"] is not None:
            logger.warning("skipped %s, which does not decode (%s); %s", item["name"], item["error"], consequence)


# ---------------------------------------------------------------------------------------------- hf-mim pretrain


def prepare_dataset(dataset: datasets.Dataset, image_column: str, pipeline: SamplePipeline) -> datasets.Dataset:
    """What `hf-mim pretrain` iterates: the image column only, undecoded, indexed, through `pipeline`."""
    return with_sample_index(dataset, [image_column]).with_transform(pipeline)


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
    """`hf-mim pretrain`'s batches: bad samples replaced (`settle`), their names and errors carried for the log
    (`skipped_names`, `skipped_errors`), and `loss_weight` 0 with zero pixels of `pixel_shape` (C, H, W) when no
    sample of the batch decodes."""

    pixel_shape: tuple[int, int, int]
    dtype: torch.dtype = torch.float32

    def __call__(self, items: list[dict]) -> dict:
        bad = [item for item in items if item["error"] is not None]
        kept = settle(items, REPLACE)
        decoded = len(bad) < len(items)
        batch: dict = {
            "skipped_names": [item["name"] for item in bad],
            "skipped_errors": [item["error"] for item in bad],
            "loss_weight": torch.tensor(1.0 if decoded else 0.0),
        }
        if decoded:
            batch["pixel_values"] = torch.stack([item["pixel_values"] for item in kept])
        else:
            batch["pixel_values"] = torch.zeros(len(items), *self.pixel_shape, dtype=self.dtype)
        if "stream_position" in items[0]:  # streaming: where the worker's stream stands after this batch
            batch["stream_position"] = torch.tensor(items[-1]["stream_position"])
        for key in items[0]:
            if key not in ("pixel_values", "error", "name", "stream_position"):
                batch[key] = torch.stack([item[key] for item in kept])
        return batch


# ------------------------------------------------------------------------------------------ transformers.Trainer


def _is_image_value(value) -> bool:
    return isinstance(value, (Image.Image, bytes, bytearray)) or (
        isinstance(value, dict) and bool(value.get("bytes") or value.get("path"))
    )


class ImageTransform:
    """The `datasets` transform that feeds an hf_mim pretraining model under `transformers.Trainer`.

    `dataset.with_transform(ImageTransform.from_config(model.config))` turns a batch of any image dataset (a `datasets`
    Image column, PIL images, bytes or paths) into what the model's forward takes: `pixel_values` (C, H, W), cropped
    and flipped as the method's pipeline does, plus the method's per-sample inputs (MAE's `noise`, SimMIM's and
    BEiT's `bool_masked_pos`, C-MAE's views), drawn as `hf-mim pretrain` draws them (the same `SamplePipeline`).
    Every other column (labels, ids, captions) is left out of the output, so a labelled dataset needs no
    `remove_columns`. `hf_mim.MIMTrainer` keeps the image column for the transform; a plain `Trainer` needs
    `remove_unused_columns=False` (as in transformers' `run_mae.py`), or it drops that column first.

    A sample that does not decode is replaced by a good one of the same batch and logged by name, so one bad file
    does not end a run; a batch without any good sample raises.

    Randomness: `transform.apply(dataset)` (the dataset with a sample-index column, and this transform) draws each
    sample's crop, flip and masks from a generator seeded with (`seed`, epoch, sample index), as `hf-mim pretrain`
    does: the same draws for any number of workers or processes, and after resuming from a checkpoint (`MIMTrainer`
    sets `epoch` at the start of each epoch). Through a plain `dataset.with_transform(transform)` the generators are
    seeded from torch's global RNG, which Trainer seeds and DataLoader re-seeds in every worker: reproducible, but a
    resumed run draws differently, since accelerate's loader has fetched the next batch when a checkpoint is saved.

    Args:
        augment: the per-image augmentation (`ImageAugmentation`); with `train=False` it resizes and normalises
            only, and no per-sample inputs are drawn (evaluation, pictures).
        image_column: the column holding the images; None takes the first column of images (preferring
            "image", "img", "images", "picture", "pixel_values").
        sample_inputs: `sample_inputs(generator) -> {name: tensor}`, one image's random inputs besides its pixels.
        seed: the seed of the per-sample generators when the batch has a sample-index column.

    `ImageTransform.from_config(config)` builds all of them from an hf_mim config.
    """

    def __init__(self, augment: ImageAugmentation, image_column: str | None = None, sample_inputs=None, seed: int = 0):
        self.image_column = image_column
        self.pipeline = SamplePipeline(image_column, augment, seed, sample_inputs if augment.train else None)

    augment = property(lambda self: self.pipeline.augment)
    seed = property(lambda self: self.pipeline.seed)
    sample_inputs = property(lambda self: self.pipeline.sample_inputs)

    @property
    def epoch(self) -> int:
        return self.pipeline.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.pipeline.epoch = value

    @classmethod
    def from_config(cls, config, train: bool = True, image_column: str | None = None, seed: int = 0) -> ImageTransform:
        """The transform of an hf_mim config: its size, channels and normalisation, its method's crop scale and
        per-sample inputs (from the method's `MethodSpec`)."""
        pipeline = SamplePipeline.for_config(config, image_column, seed, train)
        return cls(pipeline.augment, image_column, pipeline.sample_inputs, seed)

    def apply(self, dataset):
        """`dataset` (a `datasets.Dataset`) with a sample-index column and this transform: what Trainer trains on,
        with draws seeded per sample (see the class docstring)."""
        return with_sample_index(dataset).with_transform(self)

    def find_image_column(self, batch: dict) -> str:
        if self.image_column is not None:
            if self.image_column not in batch:
                raise ValueError(f"image_column={self.image_column!r} is not in the batch; its columns: {list(batch)}")
            return self.image_column
        found = [k for k, values in batch.items() if k != INDEX_COLUMN and len(values) and _is_image_value(values[0])]
        if not found:
            raise ValueError(
                f"no image column in the batch (columns: {list(batch)}). Under transformers.Trainer pass "
                "TrainingArguments(remove_unused_columns=False): otherwise Trainer drops the image column before "
                "this transform sees it"
            )
        return next((name for name in IMAGE_COLUMN_NAMES if name in found), found[0])

    def __call__(self, batch: dict) -> dict:
        items = self.pipeline.samples(batch[self.find_image_column(batch)], batch.get(INDEX_COLUMN))
        if all(item["error"] is not None for item in items):
            raise ValueError(f"no image of this batch decodes: { {item['name']: item['error'] for item in items} }")
        log_skipped(items, "a good image of its batch takes its place")
        kept = settle(items, REPLACE)
        return {key: [item[key] for item in kept] for key in kept[0] if key not in ("error", "name")}


# -------------------------------------------------------------------------------------------------- evaluation


@dataclass
class LabelledTransform:
    """`with_transform` for evaluation: decoded, resized (or augmented, for fine-tuning) and normalised images
    with their labels and sample indices; undecodable images flagged in `error`.

    With `seed=None` (fine-tuning) augmentations come from the global RNG, so every epoch draws new ones; Trainer
    seeds it (and each DataLoader worker's) from its own seed, so a run is still reproducible. A per-sample seed
    would give each image the same crop in every epoch, and the model would learn those crops by heart."""

    image_column: str
    label_column: str
    transform: ImageAugmentation
    seed: int | None = 0

    def __post_init__(self):
        # one pass over the images (features) or the global RNG (fine-tuning): no epoch in the seed
        self.pipeline = SamplePipeline(self.image_column, self.transform, self.seed, decode_lazily=False)

    def __call__(self, batch: dict) -> dict:
        items = self.pipeline.samples(batch[self.image_column], batch[INDEX_COLUMN])
        out = {key: [item[key] for item in items] for key in ("pixel_values", "error", "name")}
        labels, indices = batch[self.label_column], batch[INDEX_COLUMN]
        return {**out, "labels": [int(label) for label in labels], "index": [int(index) for index in indices]}


def prepare_labelled(dataset: datasets.Dataset, transform: LabelledTransform) -> datasets.Dataset:
    return with_sample_index(dataset, [transform.image_column, transform.label_column]).with_transform(transform)


@dataclass
class KeepShapeCollator:
    """Stack a batch for feature extraction: bad samples replaced (`settle`) and flagged `valid=False`, to be dropped
    after the gather, so every process runs the same batches and none waits on another. `pixel_shape` (C, H, W)
    shapes the zero images of a batch where nothing decodes."""

    pixel_shape: tuple[int, int, int]

    def __call__(self, items: list[dict]) -> dict:
        log_skipped(items, "it is left out of the features")
        kept = settle(items, REPLACE)
        decoded = any(item["error"] is None for item in items)
        return {
            "pixel_values": torch.stack([item["pixel_values"] for item in kept])
            if decoded
            else torch.zeros(len(items), *self.pixel_shape),
            "labels": torch.tensor([item["labels"] for item in kept]),
            "index": torch.tensor([item["index"] for item in kept]),
            "valid": torch.tensor([item["error"] is None for item in items]),
        }


def collate_drop_bad(items: list[dict]) -> dict:
    """Stack a batch for `transformers.Trainer`, leaving out (and logging) undecodable images (`settle`, "drop")."""
    log_skipped(items, "it is left out of its batch")
    kept = settle(items, DROP)
    if not kept:
        raise DatasetError(f"no image of a batch could be decoded: {[item['name'] for item in items]}")
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in kept]),
        "labels": torch.tensor([item["labels"] for item in kept]),
    }


__all__ = [
    "BAD_IMAGE_POLICIES",
    "DROP",
    "INDEX_COLUMN",
    "REPLACE",
    "Collator",
    "ImageTransform",
    "KeepShapeCollator",
    "LabelledTransform",
    "SamplePipeline",
    "SkipReport",
    "collate_drop_bad",
    "log_skipped",
    "method_sample_inputs",
    "prepare_dataset",
    "prepare_labelled",
    "sample_generator",
    "sample_name",
    "settle",
    "with_sample_index",
]
