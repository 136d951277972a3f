#!/usr/bin/env python
"""Pretrain any hf_mim method with `transformers.Trainer`, in the manner of transformers' `run_mae.py`.

    python examples/run_pretraining.py --output_dir outputs/trainer-mae
    accelerate launch --multi_gpu --num_processes 2 examples/run_pretraining.py --output_dir outputs/trainer-mae
    python examples/run_pretraining.py --method cmae --dataset path/to/images --max_steps 1000 --output_dir out

Arguments: the method and its model (`--method`, `--model_size` or `--config_overrides`, `--image_size`), the data
(`--dataset`: a Hub id, an image folder, a `save_to_disk` folder, or `digits`, built in and the default), and every
`TrainingArguments` flag. What the user does not give comes from the method's recipe (its `MethodSpec`, as for
`hf-mim pretrain`): the learning rate (base lr x effective batch / 256), epochs, AdamW betas, weight decay 0.05, 5%
warm-up and a cosine schedule; and `hf-mim pretrain`'s per-device batch of 64 and loss log every 10 steps. Data
goes through `hf_mim.ImageTransform` (the method's crop and per-sample inputs, seeded per sample); training through
`hf_mim.MIMTrainer` (C-MAE's EMA teacher, ADIOS's adversary at its own learning rate, the run's records, pictures
and model card, `--push_to_hub` through hf_mim's push).

On a machine without GPUs, `accelerate launch --multi_gpu --num_processes N` forms one N-process CPU (gloo) run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import SchedulerType, get_last_checkpoint

import hf_mim
from hf_mim.data.sources import (
    BUILTIN_DATASET,
    builtin_digits,
    hub_dataset_id,
    load_pretraining_dataset,
)
from hf_mim.errors import one_line
from hf_mim.modeling.auto import METHOD_SPECS, method_spec
from hf_mim.training.arguments import PretrainArguments, setup_logging, validate
from hf_mim.training.hf_trainer import MIMTrainer, cpu_process_group_if_needed
from hf_mim.training.monitor import KNNProbeCallback
from hf_mim.training.plan import plan_run
from hf_mim.training.presets import ENCODER_PRESETS
from hf_mim.training.run_folder import check_not_in_dataset, check_output_dir
from hf_mim.warm_start import load_initial_weights

logger = logging.getLogger("hf_mim.examples.run_pretraining")

#: The per-device batch when --per_device_train_batch_size is not given (`hf-mim pretrain`'s; Trainer's is 8).
DEFAULT_BATCH_SIZE = 64
#: Optimizer steps between loss logs when --logging_steps is not given (`hf-mim pretrain`'s; Trainer's is 500).
DEFAULT_LOGGING_STEPS = 10


@dataclass
class ModelArguments:
    method: str = field(default="mae", metadata={"help": "the hf_mim method", "choices": sorted(METHOD_SPECS)})
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "continue pretraining from a checkpoint (folder, file or Hub id): an hf_mim model of any method, "
            "transformers' ViTMAEForPreTraining, ViTModel or ViTForImageClassification, or facebookresearch/mae's "
            ".pth, as `hf-mim pretrain --init-from` takes it"
        },
    )
    model_size: str | None = field(
        default=None,
        metadata={
            "help": "ViT size (default: the recipe's: mini for small data, base otherwise)",
            "choices": sorted(ENCODER_PRESETS),
        },
    )
    image_size: int | None = field(default=None, metadata={"help": "input size (default: 32 on digits, else 224)"})
    patch_size: int | None = field(default=None, metadata={"help": "patch size (default: 16 from 128 px up)"})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "config fields over the recipe's, 'mask_ratio=0.6,norm_pix_loss=false'"},
    )
    recipe: str = field(
        default="auto",
        metadata={
            "help": "the method's recipe: small, paper, or auto (by data scale)",
            "choices": ["auto", "small", "paper"],
        },
    )
    base_learning_rate: float | None = field(
        default=None, metadata={"help": "lr per 256 images (default: the recipe's); --learning_rate overrides it"}
    )
    tokenizer: str | None = field(default=None, metadata={"help": "--method beit: a trained visual tokenizer"})


@dataclass
class DataArguments:
    dataset: str = field(
        default=BUILTIN_DATASET,
        metadata={"help": "Hub dataset id, image folder, save_to_disk folder, or 'digits' (built in)"},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "the Hub dataset's configuration"})
    train_split: str = field(default="train", metadata={"help": "split to train on"})
    image_column: str | None = field(default=None, metadata={"help": "the image column (default: detected)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "train on the first N samples only"})
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "watch the run learn: a labelled dataset ('digits' is the built-in one) whose k-NN probe "
            "(hf_mim.KNNProbeCallback) runs every --eval_steps steps (default: as many times as fit in 5%% of the "
            "training time) and is logged, summarised and drawn on the card"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "--eval_dataset: stop after N evaluations without a better k-NN accuracy, keeping the best"},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "write into an --output_dir holding files no hf_mim run wrote (they may be overwritten)"},
    )


def parse_overrides(text: str | None) -> dict:
    """'a=1,b=false,c=0.5,d=name' -> {"a": 1, "b": False, "c": 0.5, "d": "name"} (JSON values, else strings)."""
    fields = {}
    for item in filter(None, (text or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides item {item!r} is invalid: allowed 'field=value'")
        try:
            fields[key.strip()] = json.loads(value)
        except ValueError:
            fields[key.strip()] = value
    return fields


def flags_given(parser: HfArgumentParser, argv: list[str]) -> set[str]:
    """The fields the command line sets explicitly (the recipe fills the others)."""
    given = set()
    for action in parser._actions:
        for option in action.option_strings:
            if any(arg == option or arg.startswith(option + "=") for arg in argv):
                given.add(action.dest)
    return given


def apply_recipe(training_args: TrainingArguments, recipe_args: PretrainArguments, spec, given: set[str]) -> None:
    """The method's recipe for every TrainingArguments field the user left alone."""
    if "per_device_train_batch_size" not in given:
        training_args.per_device_train_batch_size = DEFAULT_BATCH_SIZE
    if "logging_steps" not in given:  # Trainer's 500 would leave a loss curve of a few points on small data
        training_args.logging_steps = DEFAULT_LOGGING_STEPS
    effective = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    effective *= training_args.world_size
    defaults = {
        "learning_rate": recipe_args.base_lr * effective / 256,
        "adam_beta1": spec.betas[0],
        "adam_beta2": spec.betas[1],
        "weight_decay": 0.05,
        "warmup_steps": 0.05,  # a ratio of the steps
        "lr_scheduler_type": SchedulerType.COSINE,
    }
    if "max_steps" not in given and "num_train_epochs" not in given and recipe_args.epochs:
        defaults["num_train_epochs"] = recipe_args.epochs
    for name, value in defaults.items():
        if name not in given:
            setattr(training_args, name, value)


def main(argv: list[str] | None = None) -> dict:
    cpu_process_group_if_needed()  # before TrainingArguments exists: it sets the run's devices up when created
    argv = sys.argv[1:] if argv is None else list(argv)
    # no abbreviated flags: the recipe fills what the command line does not name, so every name must be whole
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), allow_abbrev=False)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
        with open(argv[0]) as f:
            given = set(json.load(f))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        given = flags_given(parser, argv)
    setup_logging(training_args.process_index == 0)
    # as `hf-mim pretrain`: a new or empty folder or an hf_mim run's, resumed or not; never someone else's files
    check_not_in_dataset(Path(training_args.output_dir), data_args.dataset)
    check_output_dir(Path(training_args.output_dir), data_args.overwrite_output_dir, flag="--output_dir")
    from transformers import set_seed

    set_seed(training_args.seed)

    # ---- data ----------------------------------------------------------------------------------------------------
    raw, description = load_pretraining_dataset(data_args.dataset, data_args.dataset_config_name, data_args.train_split)
    if data_args.max_train_samples is not None:
        raw = raw.select(range(min(data_args.max_train_samples, len(raw))))

    # ---- the method's recipe and model ---------------------------------------------------------------------------
    spec = method_spec(model_args.method)
    recipe_args = PretrainArguments(
        method=model_args.method,
        dataset=data_args.dataset,
        image_column=data_args.image_column,
        image_size=model_args.image_size,
        patch_size=model_args.patch_size,
        model_size=model_args.model_size,
        recipe=model_args.recipe,
        tokenizer=model_args.tokenizer,
        init_from=model_args.model_name_or_path,
        base_lr=model_args.base_learning_rate,
        max_steps=training_args.max_steps if training_args.max_steps > 0 else None,
        epochs=int(training_args.num_train_epochs) if "num_train_epochs" in given else None,
        config_overrides=parse_overrides(model_args.config_overrides),
    )
    # as `hf-mim pretrain --init-from`: any checkpoint `hf-mim convert` reads (safetensors, or a .pth read with
    # weights_only), adapted to the data's image size and channels, with one line each for what it did
    validate(recipe_args)
    plan = plan_run(recipe_args, spec, raw, description, training_args.world_size)
    recipe_args, config, checkpoint, image_column = plan.args, plan.config, plan.checkpoint, plan.image_column
    model = spec.pretraining_class(config)
    if checkpoint is not None:
        for line in load_initial_weights(model, checkpoint):
            logger.info("%s", line)
        del checkpoint
    apply_recipe(training_args, recipe_args, spec, given)

    # ---- Trainer ---------------------------------------------------------------------------------------------------
    transform = hf_mim.ImageTransform.from_config(model.config, image_column=image_column, seed=training_args.seed)
    train_dataset = transform.apply(raw)  # draws seeded per sample: the same after a resume
    held_out = (
        builtin_digits("test") if data_args.dataset == BUILTIN_DATASET and data_args.train_split == "train" else None
    )
    callbacks = []
    if data_args.eval_dataset is not None:
        callbacks.append(
            KNNProbeCallback(
                data_args.eval_dataset,
                # TrainingArguments reads --eval_steps as a float (a ratio below 1); the probe takes whole steps
                eval_steps=int(training_args.eval_steps) if "eval_steps" in given else None,
                early_stopping_patience=data_args.early_stopping_patience,
                batch_size=training_args.per_device_eval_batch_size,
                seed=training_args.seed,
            )
        )
    elif data_args.early_stopping_patience is not None:
        raise ValueError("--early_stopping_patience is invalid without --eval_dataset: there is nothing to stop on")
    trainer = MIMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        callbacks=callbacks,
        picture_dataset=held_out,
        picture_split="test",
        run_info={
            "dataset": description,
            "dataset_id": hub_dataset_id(data_args.dataset),
            "recipe": recipe_args.recipe,
            "model_size": recipe_args.model_size
            if spec.encoder_presets and not model_args.model_name_or_path
            else None,
            "script": "examples/run_pretraining.py",
        },
    )
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint == "latest":
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {training_args.output_dir}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.end_training()  # the processes are done with each other; an upload may take long
    if training_args.push_to_hub and trainer.is_world_process_zero():
        trainer.push_to_hub()
    return result.metrics


def run(argv: list[str] | None = None) -> int:
    """`main` as a command: what a user can fix (a bad flag or value, a folder, a checkpoint) is one line on stderr
    and exit status 2, as `hf-mim pretrain` does."""
    try:
        main(argv)
    except (ValueError, OSError) as err:
        print(f"run_pretraining.py: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
