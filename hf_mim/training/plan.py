"""`plan_run`: the one place where a run's settings are decided, once the data and the starting checkpoint are known.

`hf-mim pretrain` validates the flags (`validate`, before anything is loaded), loads the data, then calls `plan_run`
once: it reads a sample of the images' sizes and the `--init-from` checkpoint, fills in every default the user left
out (`resolve_defaults`, with `args.reasons` saying why) and builds the model config. The `RunPlan` it returns is what
the run then reads, what it prints before step 1 (`format_plan`) and what its summary and card record. The Trainer
example (`examples/run_pretraining.py`) plans its run with the same function.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import datasets
from transformers import PretrainedConfig

from ..data.sources import check_size, find_image_column, hub_dataset_id, sample_image_sizes
from ..data.streaming import known_size
from ..modeling.backbone import patch_grid
from ..names import hub_id_of
from ..warm_start import Checkpoint, checkpoint_config_fields, checkpoint_name, read_checkpoint
from . import arguments
from .arguments import PretrainArguments, resolve_defaults
from .monitor import EVAL_BUDGET, STEPS_TIMED
from .presets import SMALL_DATASET_IMAGES, config_fields

logger = logging.getLogger("hf_mim.pretrain")


@dataclass
class RunPlan:
    """A run's settings, decided once (`plan_run`).

    Args:
        args: the arguments with every default filled in; `args.reasons` says why each was chosen.
        spec: the method's `MethodSpec`.
        config: the model config the run builds its model from.
        checkpoint: the `--init-from` checkpoint (its weights are loaded into the model), or None.
        dataset: the training data (a `datasets.Dataset`, or an `IterableDataset` under --streaming).
        description: how logs, records and cards name the data (a local path's last part, never the path).
        image_column: the column holding the images.
        num_samples: the number of training images (None: a stream whose metadata does not say).
        num_processes: the processes the run trains on.
        max_steps, epochs, warmup_steps: the run's length, known once the loader is (`with_length`).
        eval_steps: --eval-steps, the probe's interval; None: measured by the loop (`TrainingLoop._choose_eval_steps`).
        evaluation: --eval-dataset: the probe as the plan names it (`LearningMonitor.describe`), else None.
    """

    args: PretrainArguments
    spec: object
    config: PretrainedConfig
    checkpoint: Checkpoint | None
    dataset: datasets.Dataset | datasets.IterableDataset
    description: str
    image_column: str
    num_samples: int | None
    num_processes: int = 1
    max_steps: int | None = None
    epochs: int | None = None
    warmup_steps: int | None = None
    eval_steps: int | None = None
    evaluation: str | None = None

    @property
    def effective_batch(self) -> int:
        return self.args.batch_size * self.args.grad_accum * self.num_processes

    @property
    def learning_rate(self) -> float:
        """--lr, else the base learning rate scaled by the effective batch (MAE's rule: base x batch / 256)."""
        args = self.args
        return args.lr if args.lr is not None else args.base_lr * self.effective_batch / 256

    def with_length(self, batches_per_epoch: int | None) -> RunPlan:
        """The plan with its length, from the batches one epoch of the prepared loader has (None: a stream)."""
        max_steps, epochs, warmup = _run_length(self.args, batches_per_epoch)
        return replace(self, max_steps=max_steps, epochs=epochs, warmup_steps=warmup, eval_steps=self.args.eval_steps)

    def describe(self, model, init_report: list[str]) -> dict:
        """What the run will do and why, as `format_plan` prints it before step 1 (and the summary and card
        record)."""
        args, config, reasons = self.args, self.config, self.args.reasons
        grid = "x".join(str(side) for side in patch_grid(config))  # any config: a peer method brings its own
        encoder = None
        if hasattr(config, "hidden_size") and hasattr(model, "vit"):
            size = "the checkpoint's" if args.init_from else f"{args.model_size} (the {args.recipe} recipe's)"
            encoder = (
                f"ViT, {size}: {config.num_hidden_layers} blocks, width {config.hidden_size}, "
                f"{config.num_attention_heads} heads ({model.vit.num_parameters():,} parameters)"
            )
        epochs, effective_batch = self.epochs, self.effective_batch
        length = f"{self.max_steps:,}" + (f" ({epochs} epoch{'s' if epochs > 1 else ''})" if epochs else "")
        length += f", warm-up {self.warmup_steps:,}"
        how_lr = "--lr" if args.lr is not None else f"base {args.base_lr:g} x {effective_batch} / 256"
        if args.lr is None and "base_lr" in reasons:
            how_lr += f": {reasons['base_lr']}"
        return {
            "method": args.method,
            "recipe": f"{args.recipe} ({reasons.get('recipe', '--recipe')})",
            "encoder": encoder,
            "image size": f"{_px(config.image_size)} ({reasons.get('image_size', '--image-size')})",
            "patch size": f"{config.patch_size} px: {grid} patches ({reasons.get('patch_size', '--patch-size')})",
            "steps": length,
            "effective batch": f"{effective_batch} ({args.batch_size} per process x {self.num_processes} "
            f"process(es) x {args.grad_accum} accumulation)",
            "learning rate": f"{self.learning_rate:.3g} ({how_lr})",
            "weights": init_report[0].removeprefix("init from ") if init_report else "fresh (random initialisation)",
            "evaluation": self._evaluation(),
            "output": args.output_dir,
        }

    def _evaluation(self) -> str | None:
        if self.evaluation is None:
            return None
        if self.eval_steps:
            when = f"at the start, then every {self.eval_steps:,} steps (--eval-steps)"
        else:
            when = (
                f"at the start, then as many times as fit in {EVAL_BUDGET:.0%} of the training time (measured after "
                f"{STEPS_TIMED} steps)"
            )
        text = f"{when}, and at the end: {self.evaluation}"
        if self.args.early_stopping_patience:
            text += f"; stops after {self.args.early_stopping_patience} evaluations without a better accuracy"
        return text

    def summary(self, model, init_report: list[str]) -> dict:
        """The run's settings as `training_summary.json` records them (it is pushed: no local path)."""
        args = self.args
        return {
            "method": args.method,
            "recipe": args.recipe,
            "model_size": args.model_size if self.spec.encoder_presets else None,
            "plan": {k: v for k, v in self.describe(model, init_report).items() if k != "output"},
            "init_from": _init_record(args, init_report),
            "dataset": self.description,
            "dataset_id": hub_dataset_id(args.dataset),
            "num_samples": self.num_samples,
            "streaming": args.streaming,
            "image_column": self.image_column,
            "num_processes": self.num_processes,
            "effective_batch_size": self.effective_batch,
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_steps,
            "max_steps": self.max_steps,
            "epochs": self.epochs,
            "mixed_precision": args.mixed_precision,
            "eval_steps": self.eval_steps,
        }


def plan_run(args: PretrainArguments, spec, dataset, description: str, num_processes: int = 1) -> RunPlan:
    """The `RunPlan` of a run on `dataset` (what `load_pretraining_dataset` returned, with its `description`), for
    arguments that passed `validate`: the image column, the data's size, the starting checkpoint, every default
    (image size and patch size from a sample of the images, the recipe from the data's scale, what the recipe sets)
    and the model config. `args` is not changed."""
    args = replace(args, config_overrides=dict(args.config_overrides), reasons=dict(args.reasons))
    image_column = find_image_column(dataset, args.image_column)
    if isinstance(dataset, datasets.IterableDataset):
        num_samples = known_size(dataset, args.split)
    else:
        check_size(dataset, num_processes, description)
        num_samples = len(dataset)
    # the starting weights decide the encoder's shape, the images the size they are shown at; a stream of unknown
    # length is taken for a large dataset by --recipe auto
    checkpoint = read_checkpoint(args.init_from) if args.init_from else None
    start_fields, same_method = None, False
    if checkpoint is not None:
        own = config_fields(spec.config_class) - set(PretrainedConfig().to_dict())  # not transformers' bookkeeping
        start_fields, same_method = checkpoint_config_fields(checkpoint, spec.config_class, own)
    sizes = sample_image_sizes(dataset, image_column) if args.image_size is None else None
    args = resolve_defaults(args, num_samples or SMALL_DATASET_IMAGES, sizes, start_fields, same_method)
    # looked up on the module: a benchmark's peer method brings its own (benchmarks/bench_quality.py)
    config = arguments.build_config(args, spec, start_fields)
    return RunPlan(args, spec, config, checkpoint, dataset, description, image_column, num_samples, num_processes)


def format_plan(plan: dict) -> str:
    width = max(len(k) for k in plan)
    return "plan:\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in plan.items() if v is not None)


def _px(size) -> str:
    return f"{size[0]}x{size[1]} px" if isinstance(size, (list, tuple)) else f"{size} px"


def _init_record(args, init_report: list[str]) -> dict | None:
    """The starting checkpoint as the summary and card name it: a Hub id, or a local folder's name (no path)."""
    if not args.init_from:
        return None
    return {"name": checkpoint_name(args.init_from), "hub_id": hub_id_of(args.init_from), "report": init_report}


def _run_length(args: PretrainArguments, batches_per_epoch: int | None) -> tuple[int, int | None, int]:
    """(optimizer steps, epochs, warm-up steps) of the run: --max-steps, else --epochs over the data. A stream
    (`batches_per_epoch` None) has no epoch count of its own."""
    stream = batches_per_epoch is None
    steps_per_epoch = None if stream else max(1, math.ceil(batches_per_epoch / args.grad_accum))
    max_steps = args.max_steps or steps_per_epoch * args.epochs
    warmup = args.warmup_steps if args.warmup_steps is not None else int(0.05 * max_steps)
    if warmup >= max_steps and args.warmup_steps is not None:
        raise ValueError(
            f"--warmup-steps={warmup} is invalid: fewer than the run's {max_steps} steps; it would end in warm-up"
        )
    return max_steps, None if stream else math.ceil(max_steps / steps_per_epoch), warmup
