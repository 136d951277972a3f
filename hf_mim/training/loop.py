"""The loop of `hf-mim pretrain`: epochs (or an endless stream) of micro-batches, accumulated into optimizer steps.

It names no method. It calls `model(**batch)`, logs the output's scalar fields, steps the method's adversary (from its
`MethodSpec`) after the main step, and lets the model do its own per-step work (`after_optimizer_step`: an EMA
teacher, a tokenizer's temperature). A step whose loss is not finite on any process is skipped on all of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

import torch
from accelerate.utils import broadcast_object_list, gather_object, send_to_device
from tqdm.auto import tqdm

from ..data.images import normalize_pixels
from ..data.pipeline import SkipReport
from ..errors import TrainingError
from ..model_cards.card import best_evaluation
from .monitor import EVAL_BUDGET, STEPS_TIMED, interval_for_budget

logger = logging.getLogger("hf_mim.pretrain")


@dataclass
class _Sums:
    """A loss and metrics summed over some steps (all on the device: no host sync until they are logged)."""

    loss: torch.Tensor
    count: int = 0
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def add_metrics(self, metrics: dict[str, torch.Tensor], divisor: int = 1) -> None:
        for name, value in metrics.items():
            self.metrics[name] = self.metrics.get(name, torch.zeros_like(self.loss)) + value / divisor


class TrainingLoop:
    """The epochs and optimizer steps of a run: micro-batches accumulated with `accelerator.accumulate`, a step's
    update skipped on every rank when its loss is not finite on any, the adversary's step after the main one,
    schedules, logging every `logging_steps` and checkpoints every `checkpointing_steps`."""

    def __init__(
        self,
        accelerator,
        args,
        spec,
        model,
        optimizer,
        adversary_optimizer,
        schedulers,
        state,
        max_steps,
        source,
        stream=None,
        monitor=None,
        eval_steps=None,
        best=None,
    ):
        self.accelerator, self.args, self.model = accelerator, args, model
        self.optimizer, self.adversary_optimizer, self.schedulers = optimizer, adversary_optimizer, schedulers
        self.adversary = spec.adversary_for(accelerator.unwrap_model(model).config)
        self.main_inputs = self.adversary.main_inputs if self.adversary else {}
        self.state, self.max_steps, self.source = state, max_steps, source
        self.step = self.first_step = state["step"]
        self.skips = SkipReport(dict(state["skipped"]))
        self.images_seen = 0
        self.stream = stream  # the StreamingImages of a --streaming run, else None
        # --eval-dataset: the probe (`LearningMonitor`), its interval (None: measured, `_choose_eval_steps`; a
        # resumed run keeps the one chosen before), and with --early-stopping-patience the best evaluation's weights
        self.monitor, self.best = monitor, best
        self.eval_steps = eval_steps or state.get("eval_steps")
        self.eval_seconds, self.evaluations, self.stopped_early = 0.0, 0, False
        self.postfix: dict[str, str] = {}

    @property
    def done(self) -> bool:
        return self.step >= self.max_steps or self.stopped_early

    def run(self, loader, transform, epochs: int, checkpoint) -> float:
        """Train to `max_steps`; returns the wall time in seconds."""
        accelerator, args, state = self.accelerator, self.args, self.state
        # the uint8 batches are normalised on the device, with the mean and std moved there once: a copy from
        # pageable memory every step would make the host wait for the kernels queued before it
        self.normalize = partial(
            normalize_pixels,
            mean=transform.augment.mean.to(accelerator.device),
            std=transform.augment.std.to(accelerator.device),
        )
        progress = tqdm(
            total=self.max_steps, initial=self.step, disable=not accelerator.is_local_main_process, desc="pretrain"
        )
        self.model.train()
        zero = torch.zeros((), device=accelerator.device)
        self.current, self.logged = _Sums(zero), _Sums(zero)  # the step being accumulated; steps since the last log
        self.micro_batches: list[tuple[dict, torch.Tensor]] = []  # this step's, for the adversary
        self.consecutive_bad = 0
        self.decoded_batches = zero.clone()
        self.start = time.perf_counter()
        if self.monitor is not None and not any(step == self.step for step, _ in state["eval_history"]):
            self._evaluate(progress)  # where the run starts: the reference point, and the probe's measured cost
        if self.stream is not None:
            self._run_stream(loader, checkpoint, progress)
        for epoch in range(state["epoch"], epochs or 0):
            if self.done:
                break
            transform.epoch = epoch
            loader.set_epoch(epoch)
            skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            for batches_in_epoch, batch in enumerate(batches, start=skip + 1):
                if self._train_on(batch, progress) and args.checkpointing_steps:
                    if self.step % args.checkpointing_steps == 0:
                        checkpoint(self.step, epoch, batches_in_epoch, self.skips)
                if self.done:
                    break
            self._check_something_decoded("in a whole epoch")
        progress.close()
        return time.perf_counter() - self.start

    def _run_stream(self, loader, checkpoint, progress) -> None:
        """--streaming: one pass of the endless loader to `max_steps`. The checkpoint holds every process's
        stream positions (per worker: epoch, examples read), gathered at the step it is written."""
        positions = [list(p) for p in self.stream.start]
        batches = iter(loader)
        while not self.done:
            batch = send_to_device(next(batches), self.accelerator.device)
            worker, epoch, read = batch.pop("stream_position").tolist()
            positions[worker] = [epoch, read]
            if not self._train_on(batch, progress):
                continue
            if self.args.checkpointing_steps and self.step % self.args.checkpointing_steps == 0:
                self.state["stream_positions"] = gather_object([positions])
                checkpoint(self.step, 0, 0, self.skips)
            if self.step % 100 == 0:
                self._check_something_decoded(f"in the {self.step} steps so far")
        self._check_something_decoded(f"in {self.step} steps")

    def _train_on(self, batch: dict, progress) -> bool:
        """One micro-batch; returns whether it completed an optimizer step (then counted, scheduled, logged)."""
        self.decoded_batches = self.decoded_batches + self._micro_step(batch)
        if not self.accelerator.sync_gradients:
            return False
        for scheduler in self.schedulers:
            scheduler.step()
        self.step += 1
        progress.update(1)
        self._log(progress, self.start)
        if self.step - self.first_step == ETA_AFTER_STEPS:
            per_step = (time.perf_counter() - self.start - self.eval_seconds) / ETA_AFTER_STEPS  # training alone
            if self.monitor is not None and self.eval_steps is None:
                self._choose_eval_steps(per_step, progress)
            if self.step < self.max_steps:
                remaining = per_step * (self.max_steps - self.step)
                logger.info(
                    "%d steps took %.2f s each: about %s to finish %d steps",
                    ETA_AFTER_STEPS, per_step, _duration(remaining), self.max_steps,
                )  # fmt: skip
        if self.monitor is not None and (
            self.step == self.max_steps or (self.eval_steps and self.step % self.eval_steps == 0)
        ):
            self._evaluate(progress)
        return True

    def _choose_eval_steps(self, per_step: float, progress) -> None:
        """The default interval of the probe (`interval_for_budget`): as many evaluations as fit in `EVAL_BUDGET` of
        the training time, the start's and the end's included, from the evaluations timed so far and `per_step`;
        recorded in the state, so a resumed run keeps it. Every process takes the main process's choice, so all
        evaluate at the same steps."""
        if not self.evaluations:  # resumed where the probe had run, with the interval still to choose: time one now
            self._evaluate(progress)
        seconds = self.eval_seconds / self.evaluations
        steps = interval_for_budget(seconds, per_step, self.max_steps)
        self.eval_steps = int(broadcast_object_list([steps])[0]) if self.accelerator.num_processes > 1 else steps
        self.state["eval_steps"] = self.eval_steps
        logger.info(
            "the probe: every %d steps (one evaluation took %.2f s, a step %.3f s: at most %.0f%% of training)",
            self.eval_steps, seconds, per_step, 100 * EVAL_BUDGET,
        )  # fmt: skip

    def _evaluate(self, progress) -> None:
        """The probe at this step, on every process alike (so all stop early alike), logged and recorded; once per
        step."""
        if self.state["eval_history"] and self.state["eval_history"][-1][0] == self.step:
            return
        start = time.perf_counter()
        report = self.monitor.evaluate(self.model, self.step)
        self.eval_seconds += time.perf_counter() - start
        self.evaluations += 1
        logs = report.as_logs()
        self.state["eval_history"].append([self.step, logs])
        self.accelerator.log(logs, step=self.step)
        self.postfix["knn"] = f"{report.knn_accuracy:.1f}%"
        progress.set_postfix(self.postfix)
        recon = (
            "" if report.reconstruction_error is None else f", reconstruction error {report.reconstruction_error:.4f}"
        )
        logger.info("step %d: held-out k-NN accuracy %.2f%%%s", self.step, report.knn_accuracy, recon)
        if self.best is None or self.step == 0:  # the untrained weights are a reference, not a candidate
            return
        self.best.offer(report, self.accelerator.unwrap_model(self.model))
        waited = self.best.evaluations_since(self.state["eval_history"])
        if waited >= self.args.early_stopping_patience and self.step < self.max_steps:
            self.stopped_early = True
            logger.info(
                "step %d: %d evaluations without a better k-NN accuracy than step %d's %.2f%%: stopping early",
                self.step, waited, self.best.step, self.best.knn_accuracy,
            )  # fmt: skip

    def _check_something_decoded(self, when: str) -> None:
        # a dataset of which nothing decodes would "train" on zero losses and save an untrained model
        if self.accelerator.reduce(self.decoded_batches, "sum").item() == 0:
            raise TrainingError(
                f"no image of {self.source} could be decoded {when} ({len(self.skips.skipped)} files skipped on "
                f"this process, for example {next(iter(self.skips.skipped), 'none')}); nothing was trained"
            )

    def _micro_step(self, batch: dict) -> torch.Tensor:
        """Forward and backward of one micro-batch, and the optimizer step when it completes one. Returns the
        batch's weight: 0 when none of its images decoded."""
        accelerator = self.accelerator
        for name in self.skips.add(batch.pop("skipped_names"), batch.pop("skipped_errors")):
            logger.warning(
                "[rank %d] skipped unreadable image %s: %s", accelerator.process_index, name, self.skips.skipped[name]
            )
        weight = batch.pop("loss_weight")
        batch["pixel_values"] = self.normalize(batch["pixel_values"])
        if self.adversary is not None and self.adversary.replays:
            self.micro_batches.append((batch, weight))
        with accelerator.accumulate(self.model):
            outputs = self.model(**batch, **self.main_inputs)
            loss = outputs.loss * weight
            self.current.add_metrics(_scalar_fields(outputs))
            # Backward whatever the loss: whether it was finite is decided once per optimizer step, alike on every
            # rank, so micro-steps carry no host sync and no collective of their own.
            accelerator.backward(loss)
            self.current.loss, self.current.count = self.current.loss + loss.detach().float(), self.current.count + 1
            if accelerator.sync_gradients:
                self._optimizer_step()
        self.images_seen += batch["pixel_values"].shape[0] * accelerator.num_processes
        return weight

    def _optimizer_step(self) -> None:
        accelerator, current = self.accelerator, self.current
        step_loss = current.loss / current.count
        non_finite = accelerator.reduce((~torch.isfinite(step_loss)).float(), "sum").item() > 0
        if non_finite:
            self.consecutive_bad += 1
            self.state["non_finite_steps"].append(self.step + 1)
            logger.warning("step %d: non-finite loss; update skipped", self.step + 1)
            if self.consecutive_bad >= self.args.max_non_finite_steps:
                raise TrainingError(
                    f"{self.consecutive_bad} consecutive steps with a non-finite loss (last: step {self.step + 1}); "
                    "stopping. Lower the learning rate or use bf16 rather than fp16."
                )
        else:
            self.consecutive_bad = 0
            self.optimizer.step()
            after_step = getattr(accelerator.unwrap_model(self.model), "after_optimizer_step", None)
            if after_step is not None:  # the model's own per-step work (an EMA teacher, ...)
                after_step(self.step + 1, self.max_steps)
            self.logged.loss, self.logged.count = self.logged.loss + step_loss, self.logged.count + 1
            self.logged.add_metrics(current.metrics, current.count)
        self.optimizer.zero_grad(set_to_none=True)  # a skipped step's gradients go too
        if self.adversary is not None:
            if not non_finite:
                metrics = self.adversary.step(accelerator, self.model, self.adversary_optimizer, self.micro_batches)
                self.logged.add_metrics(metrics)
            else:  # an adversary stepping on the main backward's gradients must not keep a skipped step's
                self.adversary_optimizer.zero_grad(set_to_none=True)
            self.micro_batches = []
        self.current = _Sums(torch.zeros_like(current.loss))

    def _log(self, progress, start: float) -> None:
        """Every `logging_steps` and at the end: the mean loss and metrics of the good steps since the last log.
        `logged.count` is the same on every rank (the skip decision is shared), so all enter the reduce or none."""
        logged, step = self.logged, self.step
        if not ((step % self.args.logging_steps == 0 or step == self.max_steps) and logged.count):
            return
        names = sorted(logged.metrics)
        means = self.accelerator.reduce(
            torch.stack([logged.loss] + [logged.metrics[n] for n in names]) / logged.count, "mean"
        )
        mean_loss, *metric_values = means.tolist()
        logs = {
            "loss": mean_loss,
            "lr": self.schedulers[0].get_last_lr()[0],
            "images_per_second": self.images_seen / (time.perf_counter() - start),
        }
        logs.update(zip(names, metric_values, strict=True))
        self.state["loss_history"].append([step, mean_loss])
        if names:
            self.state["metrics_history"].append([step, dict(zip(names, metric_values, strict=True))])
        self.postfix["loss"] = f"{mean_loss:.4f}"
        progress.set_postfix(self.postfix)
        self.accelerator.log(logs, step=step)
        self.logged = _Sums(torch.zeros_like(logged.loss))

    def summary(self, wall: float, resume_path) -> dict:
        """What the run did, for `training_summary.json` (after every process has finished training)."""
        self.accelerator.wait_for_everyone()
        skipped = {}
        for report in gather_object([self.skips.skipped]):
            skipped.update(report)
        state = self.state
        return dict(
            steps=self.step,
            wall_time_seconds=round(wall, 2),
            images_per_second=round(self.images_seen / wall, 2) if wall > 0 else None,
            final_loss=state["loss_history"][-1][1] if state["loss_history"] else None,
            final_metrics=state["metrics_history"][-1][1] if state["metrics_history"] else {},
            loss_history=state["loss_history"],
            metrics_history=state["metrics_history"],
            non_finite_steps=state["non_finite_steps"],
            skipped_images=skipped,
            resumed_from=str(resume_path) if resume_path else None,
            **self._eval_summary(wall),
        )

    def _eval_summary(self, wall: float) -> dict:
        if self.monitor is None:
            return {}
        history = self.state["eval_history"]
        return dict(
            eval_steps=self.eval_steps,
            eval_history=history,
            eval_seconds=round(self.eval_seconds, 2),
            eval_share_of_wall=round(self.eval_seconds / wall, 4) if wall > 0 else None,
            best_eval=best_evaluation(history),
            stopped_early_at=self.step if self.stopped_early else None,
        )


#: Steps after which the run logs its estimated time to finish (the first steps, warm caches aside, are typical), and
#: chooses the interval of the --eval-dataset probe.
ETA_AFTER_STEPS = STEPS_TIMED


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _scalar_fields(outputs) -> dict[str, torch.Tensor]:
    """The output's scalar tensors besides the loss (R-MAE's two losses, BEiT's accuracy, ...): logged like it."""
    return {
        name: value.detach().float()
        for name, value in outputs.items()
        if name != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0
    }
