"""The `transformers.Trainer` path: `MIMTrainer`, what `examples/run_pretraining.py` trains with.

`Trainer` already trains every hf_mim model (each forward returns its loss). `MIMTrainer` adds what a method needs
beyond a loss, read from the method's `MethodSpec`, and the records `hf-mim pretrain` leaves:

- the model's per-optimizer-step work (an EMA teacher, a tokenizer's temperature) through `EMATeacherCallback`,
  added when missing, with the teacher saved in and restored from Trainer's checkpoints;
- a training set formatted with `hf_mim.ImageTransform` kept whole, whatever `remove_unused_columns` says (the
  transform returns the forward's inputs only, and needs the image column Trainer would prune);
- AdamW parameter groups as `hf-mim pretrain` builds them (weight decay on matrices only), and the method's
  adversary (ADIOS's occlusion model) in a group of its own at the adversary's learning rate. Under Trainer the
  adversary learns through the model's gradient reversal (`phase=None`), in the same step as the rest: an
  approximation of `hf-mim pretrain`'s alternating update, documented in docs/methods/adios.md;
- a check, at the end of `train`, that every process holds the same weights;
- on the final `save_model`: `trainer_state.json`, `training_args.json` (TrainingArguments as JSON, tokens
  redacted), `training_summary.json` (the run as the model card reads it), `loss_curve.png` and the method's
  picture, then the model card;
- `push_to_hub` through hf_mim's own push (`hf_mim.hub.push_folder`): safetensors, config, processor, modeling
  code, records, pictures and card, never Trainer's pickled `training_args.bin`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

import datasets
from transformers import Trainer, TrainerCallback

from ..data.pipeline import ImageTransform
from ..data.sources import find_image_column
from ..errors import DatasetError
from ..files import write_atomic
from ..hub import push_folder
from ..model_cards.card import (
    TRAINER_STATE,
    TRAINING_ARGS,
    TRAINING_SUMMARY,
    model_card_for_folder,
    trainer_run,
    write_model_card,
)
from ..modeling.auto import SPECS_BY_MODEL_TYPE
from .callbacks import TEACHER_FILE, EMATeacherCallback, save_teacher
from .distributed import end_training, hardware_description, needs_cpu_process_group, ranks_in_sync
from .monitor import KNNProbeCallback
from .optim import method_param_groups
from .records import save_pictures

logger = logging.getLogger(__name__)


def cpu_process_group_if_needed() -> bool:
    """Ask accelerate for a CPU (gloo) process group when launched on several processes without GPUs. Call it before
    `TrainingArguments` is created (HfArgumentParser creates it): `accelerate launch --multi_gpu --num_processes 2`
    or torchrun on a machine without GPUs would otherwise start processes that each train alone, all writing the
    same output folder. Returns whether it did (it sets `ACCELERATE_USE_CPU`, which TrainingArguments reads)."""
    if not needs_cpu_process_group():
        return False
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return True


class MIMTrainer(Trainer):
    """`transformers.Trainer` for hf_mim's pretraining models (see the module docstring).

    Args (besides Trainer's):
        run_info: what the records cannot see and the card should say: `dataset` (a description), `dataset_id` (a
            Hub id, for the card's metadata), `recipe`, `model_size`, ... merged into `training_summary.json`.
        picture_dataset: a `datasets.Dataset` of images to draw the method's picture (and, for pixel targets, the
            reconstruction error) from; images the run did not train on, preferably. Default: the training set's
            first images, without augmentation.
        picture_split: the name of `picture_dataset`'s split, for the card ("test", ...).
    """

    def __init__(
        self, *args, run_info: dict | None = None, picture_dataset=None, picture_split: str = "held-out", **kwargs
    ):
        super().__init__(*args, **kwargs)
        if self.args.world_size == 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} processes were launched but TrainingArguments formed a "
                "one-process run, so each process would train alone. On a machine without GPUs pass "
                "TrainingArguments(use_cpu=True), or call hf_mim.training.cpu_process_group_if_needed() before "
                "creating TrainingArguments"
            )
        if not any(isinstance(c, EMATeacherCallback) for c in self.callback_handler.callbacks):
            self.add_callback(EMATeacherCallback())
        self.probe = next((c for c in self.callback_handler.callbacks if isinstance(c, KNNProbeCallback)), None)
        if self.probe is not None:
            self.probe.trainer = self  # its loaders are sharded over this run's processes; it logs through `log`
        transform = image_transform_of(self.train_dataset)
        if transform is not None:
            if self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0:
                raise ValueError(
                    "dataloader_persistent_workers=True is invalid with hf_mim.ImageTransform: the workers would "
                    "keep the first epoch's transform and draw the same crops and masks every epoch; allowed: False"
                )
            self.add_callback(_TransformEpoch(transform))
        self.run_info = dict(run_info or {})
        self.picture_dataset, self.picture_split = picture_dataset, picture_split
        self.ranks_in_sync: bool | None = None
        if self.args.push_to_hub and self.args.hub_strategy != "end":
            logger.info(
                "MIMTrainer pushes once, at the end of training, through hf_mim's push (hub_strategy=%s is not "
                "used: Trainer's checkpoint pushes would upload pickled optimizer and argument files)",
                self.args.hub_strategy,
            )

    def _remove_unused_columns(self, dataset, description: str | None = None):
        # an ImageTransform reads the image column and returns the forward's inputs only: Trainer's column pruning
        # (remove_unused_columns=True, its default) would drop that column before the transform sees it
        if image_transform_of(dataset) is not None:
            return dataset
        return super()._remove_unused_columns(dataset, description)

    # ---- optimizer ---------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """AdamW (or the optimizer TrainingArguments names) over hf_mim's parameter groups: weight decay on weight
        matrices only, and the method's adversary in groups of its own at its learning rate."""
        model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        spec = SPECS_BY_MODEL_TYPE.get(getattr(model.config, "model_type", None))
        groups, adversary_groups, adversary_lr = method_param_groups(model, spec, model.config, self.args.weight_decay)
        groups += [{**g, "lr": adversary_lr} for g in adversary_groups]
        groups = [g for g in groups if g["params"]]
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        if not isinstance(optimizer_cls, type) or {"params", "model", "optimizer_dict"} & set(kwargs):
            # an optimizer that builds its own groups (GaLore, LOMO, layer-wise, factories): Trainer's way
            return super().create_optimizer(model)
        self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    # ---- end of training: every process holds the same weights -----------------------------------------------

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)

        model = self.accelerator.unwrap_model(self.model)
        extra = [model.teacher] if hasattr(model, "teacher") else []
        # every process computes and gathers the same comparison, so all raise together, none waits on another
        self.ranks_in_sync = ranks_in_sync(self.accelerator, self.model, extra)
        if not self.ranks_in_sync:
            raise RuntimeError(
                f"parameters differ across the {self.accelerator.num_processes} processes at the end of training"
            )
        if self.accelerator.num_processes > 1:
            logger.info("parameters identical on all %d processes", self.accelerator.num_processes)
        return output

    def end_training(self) -> None:
        """End a multi-process run: wait for every process, then tear the process group down, DDP's wrapper first.
        Call it after the final `save_model` and before an upload (which then runs on the main process alone: an
        upload can outlast any collective timeout). Trainer leaves the group to interpreter exit, where torch frees
        it with the GIL held while a gloo thread may still need the GIL: on 2 CPU processes a rank then aborted
        ("terminate called without an active exception") in about 1 run of 4 here (pytorch#56297). Training cannot
        continue afterwards."""
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
        self.model_wrapped = self.model  # the DDP wrapper's reducer must not hold the last reference to the group
        self.deepspeed = None
        end_training(self.accelerator)

    # ---- the final model's records, pictures and card ----------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Trainer's `save_model`; into the run's own output folder (not a checkpoint) it also writes the run's
        records, pictures and EMA teacher, then, once the weights are in, `training_summary.json` (a folder with the
        summary holds a whole model, as after `hf-mim pretrain`) and the card that reads them."""
        final = output_dir is None or Path(output_dir).resolve() == Path(self.args.output_dir).resolve()
        records = final and self.args.should_save and self.state.global_step > 0
        summary = self._save_records(Path(self.args.output_dir)) if records else None
        super().save_model(output_dir, _internal_call)
        if final:
            self._final_saved_at = self.state.global_step
        if summary is not None:
            write_atomic(Path(self.args.output_dir, TRAINING_SUMMARY), json.dumps(summary, indent=2))
            self.create_model_card()

    def _save_records(self, folder: Path) -> dict:
        """Everything of the run but its summary, which it returns."""
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        spec = SPECS_BY_MODEL_TYPE.get(getattr(model.config, "model_type", None))
        state = json.loads(json.dumps(dataclasses.asdict(self.state), default=str))
        args = json.loads(self.args.to_json_string())  # to_dict redacts every *_token field
        world = self.accelerator.num_processes
        run = {
            "method": spec.name if spec else model.config.model_type,
            "num_samples": len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None,
            "num_processes": world,
            "effective_batch_size": self.args.per_device_train_batch_size
            * self.args.gradient_accumulation_steps
            * world,
            "hardware": hardware_description(self.accelerator),
            "ranks_in_sync": self.ranks_in_sync,
            **trainer_run(state, args),
            **self.run_info,
        }
        if self.probe is not None and self.probe.monitor is not None:
            run["eval_dataset"] = self.probe.monitor.dataset
            if self.probe.best is not None and self.probe.best.step is not None:
                run["saved_weights"] = (
                    f"step {self.probe.best.step}'s, the best held-out k-NN accuracy ({self.probe.best.knn_accuracy}%)"
                )
        write_atomic(folder / TRAINER_STATE, json.dumps(state, indent=2, sort_keys=True) + "\n")
        write_atomic(folder / TRAINING_ARGS, json.dumps(args, indent=2))
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled  # a forward on one process would wait for all
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-pictures-") as staging:
            source = self._picture_source()
            if source is not None and spec is not None:
                raw, column, split = source
                run["reconstruction"] = save_pictures(
                    model, spec, raw, column, split, model.config, run, staging, not sharded
                )
            for name in os.listdir(staging):  # each picture replaces the previous one in one rename
                os.replace(os.path.join(staging, name), folder / name)
        if hasattr(model, "teacher"):
            save_teacher(model.teacher, str(folder / f".{TEACHER_FILE}.tmp"))
            os.replace(folder / f".{TEACHER_FILE}.tmp", folder / TEACHER_FILE)
        return run

    def _picture_source(self):
        """(raw dataset, image column, split) to draw the picture from, or None."""
        raw, split = self.picture_dataset, self.picture_split
        if raw is None:
            if not isinstance(self.train_dataset, datasets.Dataset):
                return None
            raw, split = self.train_dataset.with_format(None), "train"
        try:
            return raw, find_image_column(raw), split
        except DatasetError as err:
            logger.warning("no pictures for the card: %s", err)
            return None

    def create_model_card(self, license: str | None = None, tags=None, finetuned_from: str | None = None, **kwargs):
        """hf_mim's model card (written from the folder's records), in place of Trainer's generic one."""
        if not self.is_world_process_zero():
            return

        model = self.accelerator.unwrap_model(self.model)
        card = model_card_for_folder(
            self.args.output_dir, config=model.config, license=license, base_model=finetuned_from
        )
        if tags:
            card.data.tags = list(
                dict.fromkeys([*(card.data.tags or []), *([tags] if isinstance(tags, str) else tags)])
            )
        write_model_card(self.args.output_dir, card)

    # ---- the Hub ------------------------------------------------------------------------------------------------

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        license: str | None = None,
        tags=None,
        **kwargs,
    ):
        """Save the final model with its records (unless `save_model` already did, at this step), then upload the
        output folder through `hf_mim.hub.push_folder` in one commit (synchronously, whatever `blocking` says).
        Returns the commit's info on the main process. After `end_training`, call it on the main process only."""
        if getattr(self, "_final_saved_at", None) != self.state.global_step:
            self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None

        repo_id = self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        return push_folder(
            self.args.output_dir,
            repo_id,
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message,
            license=license,
            tags=[tags] if isinstance(tags, str) else tags,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer's every-save push uploads the output folder as it is, pickles included; MIMTrainer pushes at the
        # end only (see __init__)
        return None


def image_transform_of(dataset):
    """The `ImageTransform` a `datasets.Dataset` is formatted with (`with_transform`), or None."""
    transform = (getattr(dataset, "format", None) or {}).get("format_kwargs", {}).get("transform")
    return transform if isinstance(transform, ImageTransform) else None


class _TransformEpoch(TrainerCallback):
    """Tells the training set's `ImageTransform` the epoch before each epoch's loader starts (Trainer calls
    `on_epoch_begin` before it creates the loader's iterator, so worker processes get the new epoch too)."""

    def __init__(self, transform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the fraction of epochs done (e.g. 2.0, or 0.04 when resuming in the first epoch)
        self.transform.epoch = int(state.epoch + 1e-6) if state.epoch else 0


__all__ = ["MIMTrainer", "cpu_process_group_if_needed", "image_transform_of"]
