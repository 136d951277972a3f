"""End-to-end fine-tuning with `transformers.Trainer`: `AutoModelForImageClassification` on a pretrained encoder, with
MAE's layer-wise learning-rate decay as an option.

Layer-wise decay (BEiT, MAE): the patch embedding, CLS token and position embeddings are layer 0, block i is layer
i + 1, the final norm and the head are layer depth + 1, and a parameter of layer l learns at
lr * layer_decay ** (depth + 1 - l). Biases, norms and tokens get no weight decay (timm's `no_weight_decay`).
"""

from __future__ import annotations

import os
import re

import torch
from transformers import AutoConfig, AutoModelForImageClassification, Trainer, TrainingArguments, set_seed

from ..data.images import ImageAugmentation
from ..data.labelled import labels_per_class_subset
from ..data.pipeline import LabelledTransform, collate_drop_bad, prepare_labelled
from ..loading import load_checked
from .protocols import load_metric

_BLOCK = re.compile(r"(?:^|\.)vit\.blocks\.(\d+)\.")
_EMBEDDING = ("vit.cls_token", "vit.pos_embed", "vit.patch_embed.", "mask_token")


def layer_id(name: str, depth: int) -> int:
    """The layer of a parameter for layer-wise decay: 0 for embeddings, i + 1 for block i, depth + 1 otherwise."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith(_EMBEDDING) or any(f".{e}" in f".{name}" for e in _EMBEDDING):
        return 0
    return depth + 1


def layer_decay_parameter_groups(model, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Optimizer groups for `model`'s trainable parameters: one per (layer, decayed or not), each with its
    `lr_scale` = layer_decay ** (depth + 1 - layer) and its weight decay. `transformers.Trainer`'s schedulers multiply
    each group's own initial lr, so a group created with lr * lr_scale keeps its scale along the schedule."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay!r} is invalid: must lie in (0, 1] (1 = no decay)")
    depth = model.config.num_hidden_layers
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        decay = name not in no_decay and param.ndim >= 2
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer),
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


class LayerDecayTrainer(Trainer):
    """`transformers.Trainer` whose AdamW (or whatever `args.optim` names) applies layer-wise lr decay."""

    def __init__(self, *args, layer_decay: float = 1.0, **kwargs):
        self.layer_decay = layer_decay
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.layer_decay == 1.0:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        opt_model = self.model if model is None else model
        groups = layer_decay_parameter_groups(opt_model, self.args.weight_decay, self.layer_decay)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        for group in groups:
            group["lr"] = self.args.learning_rate * group["lr_scale"]
            group.pop("names")
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


def accuracy_metric_fn():
    """`compute_metrics` for Trainer: accuracy through the `evaluate` metric shipped with hf_mim."""
    metric = load_metric("accuracy")

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metric.compute(predictions=logits.argmax(-1), references=prediction.label_ids)

    return compute_metrics


def finetune_transforms(config, splits, crop_scale: tuple[float, float] = (0.08, 1.0), seed: int = 0):
    """(train, test) transforms for fine-tuning: a random resized crop at `crop_scale` and a flip, drawn anew every
    epoch from the global RNG (Trainer seeds it); the test images resized only."""
    if not (len(crop_scale) == 2 and 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0):
        raise ValueError(f"crop_scale={tuple(crop_scale)!r} is invalid: allowed (min, max) with 0 < min <= max <= 1")

    def make(train_mode: bool):
        augment = ImageAugmentation.from_config(config, train_mode, crop_scale)
        return LabelledTransform(splits.image_column, splits.label_column, augment, seed=None if train_mode else seed)

    return make(True), make(False)


def finetune(
    model_name_or_path: str,
    splits,
    output_dir: str | os.PathLike,
    *,
    random_init: bool = False,
    labels_per_class: int | None = None,
    epochs: float = 50,
    batch_size: int = 64,
    base_lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 1.0,
    warmup_ratio: float = 0.1,
    drop_path_rate: float | None = None,
    label_smoothing: float = 0.1,
    pooling: str | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    seed: int = 0,
    num_workers: int = 0,
    mixed_precision: str = "no",
) -> dict:
    """Fine-tune the checkpoint's encoder with a new linear head on `splits.train` (or `labels_per_class` images of
    each class of it) and return `Trainer.evaluate`'s metrics on `splits.test` (`eval_accuracy`, `eval_loss`).

    lr = base_lr * (batch size x processes) / 256, as MAE scales it; AdamW (0.9, 0.999); cosine schedule with
    warm-up; label smoothing; the training images get a random resized crop at `crop_scale` and a flip, the test
    images are resized. Under `accelerate launch` / torchrun, Trainer runs DDP and gathers the predictions."""
    label2id = {name: i for i, name in enumerate(splits.label_names)}
    id2label = dict(enumerate(splits.label_names))
    overrides = {"num_labels": splits.num_classes, "id2label": id2label, "label2id": label2id}
    if drop_path_rate is not None:
        overrides["drop_path_rate"] = drop_path_rate
    if pooling is not None:
        overrides["pooling"] = pooling
    set_seed(seed)
    if random_init:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=False, **overrides)
        model = AutoModelForImageClassification.from_config(config)
    else:
        # the encoder must come from the checkpoint; only the new head starts fresh
        model = load_checked(
            AutoModelForImageClassification, model_name_or_path, new_prefixes=("classifier.",), **overrides
        )
    config = model.config
    train = splits.train
    if labels_per_class is not None:
        train = labels_per_class_subset(train, splits.label_column, labels_per_class, seed)

    train_transform, test_transform = finetune_transforms(config, splits, crop_scale, seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        num_train_epochs=epochs,
        learning_rate=base_lr * batch_size * world / 256,
        weight_decay=weight_decay,
        adam_beta2=0.999,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_ratio,
        label_smoothing_factor=label_smoothing,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        dataloader_num_workers=num_workers,
        bf16=mixed_precision == "bf16",
        fp16=mixed_precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = LayerDecayTrainer(
        model=model,
        args=args,
        train_dataset=prepare_labelled(train, train_transform),
        eval_dataset=prepare_labelled(splits.test, test_transform),
        data_collator=collate_drop_bad,
        compute_metrics=accuracy_metric_fn(),
        layer_decay=layer_decay,
    )
    trainer.train()
    metrics = trainer.evaluate()
    metrics["train_images"] = len(train)
    return metrics


__all__ = [
    "LayerDecayTrainer",
    "accuracy_metric_fn",
    "finetune",
    "finetune_transforms",
    "layer_decay_parameter_groups",
    "layer_id",
]
