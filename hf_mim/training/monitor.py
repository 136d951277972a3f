"""Watching a run learn: every `--eval-steps` optimizer steps, a k-NN probe on the frozen features of a labelled
dataset and, for a method with pixel targets, the reconstruction error of its held-out images.

The probe is `hf-mim evaluate`'s k-NN (DINO's weighted vote, k = 20, cosine similarity, temperature 0.07) with the
labelled dataset's train split as the bank and its test split as the queries, each capped at a seeded random subset
so that the probe costs a few percent of training. It runs on every process alike: each encodes its shard of the
images and `gather_for_metrics` brings all features to all processes, so every process computes the same accuracy
and none waits on another. It draws from a forked RNG, so a run with the probe trains exactly as one without it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import broadcast_object_list
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from ..data.images import ImageAugmentation
from ..data.labelled import LabelledSplits, load_labelled_splits
from ..data.pipeline import KeepShapeCollator, LabelledTransform, SamplePipeline, prepare_labelled
from ..data.sources import undecoded
from ..errors import DatasetError
from ..evaluation.protocols import KNN_K, KNN_TEMPERATURE, extract_features, knn_scores
from ..evaluation.recipes import choose_recipe
from ..files import write_atomic
from ..model_cards.card import eval_history_of
from ..model_cards.pictures import reconstruction_error
from ..modeling.auto import SPECS_BY_MODEL_TYPE
from ..modeling.backbone import to_2tuple

logger = logging.getLogger("hf_mim.pretrain")

#: Held-out images whose reconstruction error is measured at each evaluation (pixel-target methods).
RECONSTRUCTION_IMAGES = 256


#: The share of training time the probe may take when no interval is given.
EVAL_BUDGET = 0.05
#: Optimizer steps timed before the probe's interval is chosen.
STEPS_TIMED = 20


def interval_for_budget(eval_seconds: float, step_seconds: float, max_steps: int) -> int:
    """The probe's interval for a run of `max_steps` steps of `step_seconds` each, one evaluation taking
    `eval_seconds`: the most evaluations the budget (`EVAL_BUDGET` of the training time) affords, counting the one at
    the start and the one at the end, spread evenly so that the last interval ends at the run's end. When even those
    two exceed the budget, the interval is the whole run (the start and the end only)."""
    affordable = math.floor(EVAL_BUDGET * max_steps * step_seconds / eval_seconds) if eval_seconds > 0 else max_steps
    return math.ceil(max_steps / max(1, min(affordable, max_steps + 1) - 1))


def _subset(dataset, count: int, seed: int):
    """A seeded random subset of `count` rows (the rows themselves when there are no more), in dataset order."""
    if len(dataset) <= count:
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    return dataset.select(sorted(keep.tolist()))


@dataclass
class EvalReport:
    """One evaluation: the step, the k-NN accuracy (%) and, for pixel-target methods, the reconstruction error."""

    step: int
    knn_accuracy: float
    reconstruction_error: float | None = None

    def as_logs(self) -> dict[str, float]:
        logs = {"eval_knn_accuracy": self.knn_accuracy}
        if self.reconstruction_error is not None:
            logs["eval_reconstruction_error"] = self.reconstruction_error
        return logs


class LearningMonitor:
    """The probe of a run (module docstring). Build it with `LearningMonitor.load`; call `evaluate(model, step)`
    on every process at the same step.

    Args:
        splits: the labelled dataset (`load_labelled_splits`), already cut to the probe's bank and queries.
        config: the model config: the images are resized and normalised as the model sees them.
        pixel_target: whether to measure the reconstruction error (the method draws reconstructions).
        accelerator: the run's `Accelerator`; the loaders are sharded over its processes.
        batch_size: images per process per forward.
        num_workers: DataLoader workers.
    """

    def __init__(self, splits: LabelledSplits, config, pixel_target: bool, accelerator, batch_size: int, num_workers=0):
        self.splits, self.accelerator, self.config = splits, accelerator, config
        # the features `hf-mim evaluate` probes by default for this model: the same curve, the same figures
        self.pooling = choose_recipe("auto", config.image_size)[0].probe_pooling or getattr(config, "pooling", "cls")
        augment = ImageAugmentation.from_config(config)
        shape = (config.num_channels, *to_2tuple(config.image_size))
        transform = LabelledTransform(splits.image_column, splits.label_column, augment)
        # sharded with accelerate's function, not `accelerator.prepare_data_loader`: a loader the accelerator holds
        # is saved in (and expected back from) every checkpoint, which would tie resuming to the probe
        self.loaders = [
            prepare_data_loader(
                DataLoader(
                    prepare_labelled(part, transform),
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=num_workers,
                    collate_fn=KeepShapeCollator(shape),
                ),
                accelerator.device,
                num_processes=accelerator.num_processes,
                process_index=accelerator.process_index,
                put_on_device=True,
            )
            for part in (splits.train, splits.test)
        ]
        self.reconstruction_images = None
        if pixel_target:
            pipeline = SamplePipeline(splits.image_column, augment, seed=None, decode_lazily=False)
            test = splits.test.select(range(min(len(splits.test), 4 * RECONSTRUCTION_IMAGES)))
            values = (row[splits.image_column] for row in undecoded(test))  # a bad file is skipped, not raised
            images, _ = pipeline.first_decoded(values, RECONSTRUCTION_IMAGES)
            self.reconstruction_images = torch.stack(images) if images else None

    @classmethod
    def load(cls, name: str, config, pixel_target: bool, accelerator, batch_size: int, max_images: int, seed: int,
             num_workers: int = 0) -> LearningMonitor:  # fmt: skip
        """The probe of the labelled dataset `name` (what `hf-mim evaluate --dataset` takes): at most `max_images`
        images of its train split for the bank and a fifth as many of its test split for the queries."""
        splits = load_labelled_splits(name)
        splits.train = _subset(splits.train, max_images, seed)
        splits.test = _subset(splits.test, max(1, max_images // 5), seed + 1)
        if len(splits.train) < KNN_K:
            raise DatasetError(
                f"--eval-dataset {name}: its train split holds {len(splits.train)} images; the k-NN probe needs at "
                f"least k = {KNN_K}"
            )
        return cls(splits, config, pixel_target, accelerator, batch_size, num_workers)

    @property
    def dataset(self) -> str:
        """The probe's data as the plan, the records and the card name it (a local path by its last part only)."""
        splits = self.splits
        return (
            f"{splits.description}: {len(splits.train):,} train images as the bank, {len(splits.test):,} "
            f"{splits.test_split!r} images as the queries"
        )

    def describe(self) -> str:
        """The probe as the plan prints it."""
        return f"k-NN (k = {KNN_K}) on {self.dataset}"

    @torch.no_grad()
    def evaluate(self, model, step: int) -> EvalReport:
        """The probe of `model` (the prepared model of the run) at `step`, on every process alike; the model is back
        in training mode after it, and the RNG of every device as it was."""
        accelerator = self.accelerator
        unwrapped = accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                bank, bank_labels, _ = extract_features(unwrapped, self.loaders[0], accelerator, pooling=self.pooling)
                queries, query_labels, _ = extract_features(
                    unwrapped, self.loaders[1], accelerator, pooling=self.pooling
                )
                scores = knn_scores(bank, bank_labels, queries, self.splits.num_classes, KNN_K, KNN_TEMPERATURE)
                accuracy = 100.0 * float((scores.argmax(dim=1) == query_labels).float().mean())
                error = None
                if self.reconstruction_images is not None:
                    with accelerator.autocast():
                        # the same masks at every evaluation, so that the curve compares like with like
                        error = reconstruction_error(unwrapped, self.reconstruction_images)["ratio"]
        finally:
            unwrapped.train(was_training)
        return EvalReport(step, round(accuracy, 4), None if error is None else round(float(error), 6))


class BestWeights:
    """--early-stopping-patience: the weights of the run's best evaluation so far, on the CPU of every process (the
    probe gives every process the same accuracy, so all keep the same step). It is checkpointed with the run (a
    `state_dict` of tensors and JSON values), so that a resumed run still ends with them."""

    def __init__(self):
        self.step: int | None = None
        self.knn_accuracy: float | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def offer(self, report: EvalReport, model) -> bool:
        """Keep `model`'s weights (the unwrapped model) if `report` beats the best so far; returns whether it did."""
        if self.knn_accuracy is not None and report.knn_accuracy <= self.knn_accuracy:
            return False
        self.step, self.knn_accuracy = report.step, report.knn_accuracy
        self.weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
        return True

    def evaluations_since(self, history: list) -> int:
        """How many evaluations of `history` ([[step, logs], ...]) came after the best one."""
        return sum(1 for step, _ in history if self.step is not None and step > self.step)

    def state_dict(self) -> dict:
        return {"step": self.step, "knn_accuracy": self.knn_accuracy, "weights": self.weights or {}}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.knn_accuracy = state["step"], state["knn_accuracy"]
        self.weights = dict(state["weights"]) or None


#: Beside a Trainer checkpoint's weights: the best evaluation's weights (with early stopping), and the probe's interval.
BEST_WEIGHTS_FILE, PROBE_FILE = "best_weights.safetensors", "knn_probe.json"


class KNNProbeCallback(TrainerCallback):
    """`hf-mim pretrain --eval-dataset` under `transformers.Trainer`: the k-NN probe (`LearningMonitor`) of a labelled
    dataset every `eval_steps` optimizer steps and at the end, on every process alike.

    The figures (`eval_knn_accuracy`, and `eval_reconstruction_error` for pixel targets) go into Trainer's log
    history, and so into `trainer_state.json`, `training_summary.json` and the card's curve; under `MIMTrainer` they
    are logged through `Trainer.log`, so the progress bar and the trackers show them too. With
    `early_stopping_patience`, training stops after that many evaluations without a better k-NN accuracy, and the
    model is given back the best evaluation's weights when training ends (they are saved beside each checkpoint's
    weights, so a resumed run still ends with them).

    Args:
        eval_dataset: a labelled dataset, as `hf-mim evaluate --dataset` takes it ("digits": the built-in one).
        eval_steps: evaluate every N optimizer steps (default: `interval_for_budget`, from the first evaluation's time
            and the first `STEPS_TIMED` steps'; kept in checkpoints).
        early_stopping_patience: stop after N evaluations without a better k-NN accuracy.
        max_images: at most this many train images as the bank, and a fifth as many test images as the queries.
        batch_size: images per process per forward.
        seed: the seed of the bank's and the queries' subsets.
    """

    def __init__(self, eval_dataset: str, eval_steps: int | None = None, early_stopping_patience: int | None = None,
                 max_images: int = 5000, batch_size: int = 64, seed: int = 0):  # fmt: skip
        for name, value in (("eval_steps", eval_steps), ("early_stopping_patience", early_stopping_patience)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} is invalid: a positive int, or None")
        self.eval_dataset, self.eval_steps, self.patience = eval_dataset, eval_steps, early_stopping_patience
        self.max_images, self.batch_size, self.seed = max_images, batch_size, seed
        self.trainer = None  # MIMTrainer binds itself: its accelerator, and its `log` for the trackers
        self.monitor: LearningMonitor | None = None
        self.history: list = []
        self.best = BestWeights() if early_stopping_patience else None
        self.eval_seconds, self.evaluations, self.started = 0.0, 0, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        accelerator = self.trainer.accelerator if self.trainer is not None else Accelerator()
        if self.monitor is None:
            pixel_target = any(
                picture.kind == "reconstruction"
                for spec in [SPECS_BY_MODEL_TYPE.get(model.config.model_type)]
                if spec is not None
                for picture in spec.pictures(model.config)
            )
            self.monitor = LearningMonitor.load(
                self.eval_dataset, model.config, pixel_target, accelerator, self.batch_size, self.max_images, self.seed
            )
        self.history = eval_history_of(state.log_history)
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if self.eval_steps is None and os.path.isfile(os.path.join(checkpoint, PROBE_FILE)):
            with open(os.path.join(checkpoint, PROBE_FILE)) as f:
                self.eval_steps = json.load(f).get("eval_steps")
        saved = os.path.join(checkpoint, BEST_WEIGHTS_FILE)
        if self.best is not None and state.global_step > 0 and os.path.isfile(saved):
            with safe_open(saved, "pt") as f:
                metadata = f.metadata() or {}
            self.best.load_state_dict(
                {"step": int(metadata["step"]), "knn_accuracy": float(metadata["knn_accuracy"]),
                 "weights": load_file(saved)}
            )  # fmt: skip
        # where training starts; if that step was evaluated before a resume and the interval is still to choose, it is
        # evaluated again (not recorded twice), to time it
        self._evaluate(args, state, control, model, force=self.eval_steps is None)
        self.first_step, self.started = state.global_step, time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if self.eval_steps is None and step - self.first_step == STEPS_TIMED:
            per_step = (time.perf_counter() - self.started) / STEPS_TIMED
            seconds = self.eval_seconds / self.evaluations
            self.eval_steps = interval_for_budget(seconds, per_step, state.max_steps)
            if self.trainer is not None and self.trainer.accelerator.num_processes > 1:
                self.eval_steps = int(broadcast_object_list([self.eval_steps])[0])  # every process alike
            logger.info("the probe: every %d steps (an evaluation took %.2f s, a step %.3f s)", self.eval_steps,
                        seconds, per_step)  # fmt: skip
        if step == state.max_steps or (self.eval_steps and step % self.eval_steps == 0):
            self._evaluate(args, state, control, model)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        write_atomic(Path(folder, PROBE_FILE), json.dumps({"eval_steps": self.eval_steps}))
        if self.best is not None and self.best.weights is not None:
            metadata = {"step": str(self.best.step), "knn_accuracy": repr(self.best.knn_accuracy)}
            partial = os.path.join(folder, f".{BEST_WEIGHTS_FILE}.tmp")  # a resume never finds half a file
            save_file(self.best.weights, partial, metadata=metadata)
            os.replace(partial, os.path.join(folder, BEST_WEIGHTS_FILE))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.best is not None and self.best.weights is not None:
            model.load_state_dict(self.best.weights)
            logger.info("the model now holds step %d's weights, the best held-out k-NN accuracy (%.2f%%)",
                        self.best.step, self.best.knn_accuracy)  # fmt: skip

    def _evaluate(self, args, state, control, model, force: bool = False) -> float:
        """The probe at this step (once per step, unless `force`); returns how long it took."""
        step = state.global_step
        if not force and any(entry[0] == step for entry in self.history):
            return 0.0
        start = time.perf_counter()
        report = self.monitor.evaluate(model, step)
        seconds = time.perf_counter() - start
        self.eval_seconds, self.evaluations = self.eval_seconds + seconds, self.evaluations + 1
        if force and any(entry[0] == step for entry in self.history):
            return seconds
        logs = report.as_logs()
        self.history.append([step, logs])
        if self.trainer is not None:
            self.trainer.log(dict(logs))  # the log history, the progress bar and the trackers
        else:
            state.log_history.append({**logs, "step": step})
        logger.info("step %d: held-out k-NN accuracy %.2f%%", step, report.knn_accuracy)
        if self.best is None or step == 0:
            return seconds
        self.best.offer(report, model)
        if self.best.evaluations_since(self.history) >= self.patience and step < state.max_steps:
            logger.info("%d evaluations without a better k-NN accuracy than step %d's: stopping", self.patience,
                        self.best.step)  # fmt: skip
            control.should_training_stop = True
        return seconds


__all__ = [
    "BEST_WEIGHTS_FILE",
    "EVAL_BUDGET",
    "PROBE_FILE",
    "interval_for_budget",
    "BestWeights",
    "EvalReport",
    "KNNProbeCallback",
    "LearningMonitor",
]
