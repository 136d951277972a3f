"""`hf-mim pretrain`: the Accelerate training loop.

One process, multi-process DDP (`accelerate launch`), FSDP or DeepSpeed through the user's accelerate config. The
loop is accelerate's canonical one (prepare, accumulate, save_state / load_state, skip_first_batches, trackers),
and `pretrain` reads top to bottom like accelerate's `complete_cv_example.py`. It names no method: it reads the
method's `MethodSpec` (recipe, per-sample inputs, adversary), calls `model(**batch)` and logs the output's scalar
fields; the model does its own per-step work (`after_optimizer_step`: an EMA teacher, a tokenizer's temperature).
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import datasets
import torch
from safetensors import SafetensorError

from ..convert import hub_id_of
from ..modeling.auto import method_spec
from ..modeling.backbone import to_2tuple
from ..warm_start import checkpoint_name, load_initial_weights
from .arguments import PretrainArguments, one_line, resolve_run, setup_logging, validate
from .checkpoints import load_extra_state, load_trainer_state, resolve_resume, save_checkpoint, verify_loadable
from .data import (
    BUILTIN_DATASET,
    Collator,
    PretrainingTransform,
    SkipReport,
    builtin_digits,
    check_size,
    find_image_column,
    hub_dataset_id,
    load_pretraining_dataset,
    prepare_dataset,
    undecoded,
)
from .optim import adamw, cosine_with_warmup, param_groups
from .presets import SMALL_DATASET_IMAGES
from .run_folder import (
    RunFolderError,
    RunLock,
    check_not_in_dataset,
    check_output_dir,
    forget_previous_args,
    is_no_space,
    is_write_failure,
    move_into_place,
    new_run_id,
    no_space_message,
    previous_outputs,
    previous_run_id,
    restore_previous_args,
    set_aside_previous_args,
)
from .streaming import check_every_node_has_data, known_size, streaming_loader
from .transforms import ImageAugmentation, normalize_pixels

logger = logging.getLogger("hf_mim.pretrain")


class TrainingError(RuntimeError):
    pass


def pretrain(args: PretrainArguments) -> dict:
    """Run pretraining; returns the summary also written to OUTPUT_DIR/training_summary.json."""
    from accelerate.utils import set_seed

    # resolved below; the caller's stays as given
    args = replace(args, config_overrides=dict(args.config_overrides), reasons=dict(args.reasons))
    validate(args)  # before anything is loaded; again once the defaults are resolved
    spec = method_spec(args.method)
    check_distributed_setup(spec)  # before accelerate builds (or silently replaces) the engine it was asked for
    accelerator = _accelerator(args)
    run_id, lock = _claim_output_dir(accelerator, args)
    saved = set_aside = False
    try:
        set_seed(args.seed)

        # ---- data: images, decoded and augmented per sample, with the method's per-sample inputs ------------------
        raw, description = load_pretraining_dataset(
            args.dataset, args.dataset_config, args.split, streaming=args.streaming
        )
        image_column = find_image_column(raw, args.image_column)
        if args.streaming:
            num_samples = known_size(raw, args.split)
        else:
            check_size(raw, accelerator.num_processes, description)
            num_samples = len(raw)
        # the starting weights decide the encoder's shape, the images the size they are shown at; a stream of
        # unknown length is taken for a large dataset by --recipe auto
        args, config, checkpoint = resolve_run(args, spec, raw, image_column, num_samples or SMALL_DATASET_IMAGES)
        check_distributed_setup(spec, config)
        transform, loader, stream = _data(args, spec, config, raw, image_column, accelerator)

        # ---- model, optimizers, schedules ----------------------------------------------------------------------
        model = spec.pretraining_class(config)
        init_report = load_initial_weights(model, checkpoint) if checkpoint else []
        del checkpoint  # its copy of the weights
        for line in init_report:
            logger.info("%s", line)
        if hasattr(model, "teacher"):
            # built now, from the full weights: after prepare, FSDP2 would hand it sharded parameters to copy
            check_distributed_setup(spec, config, teacher=True)
            model.teacher  # noqa: B018
        if args.gradient_checkpointing:
            # every Block (a GradientCheckpointingLayer), non-reentrant, transformers' default; the older name on
            # transformers releases before its rename (the new one warns for the old)
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        world = accelerator.num_processes
        effective_batch = args.batch_size * args.grad_accum * world
        lr = args.lr if args.lr is not None else args.base_lr * effective_batch / 256
        optimizer, adversary_optimizer = _optimizers(model, spec, config, args, lr)
        if args.compile:
            # In place: torch.compile(model) would return a wrapper whose state-dict keys carry "_orig_mod.", and
            # the saved model would then load as freshly initialised weights.
            model.compile()
        # A streaming loader stays unprepared: each process already reads its own part of the stream. No name may
        # keep the prepared tuple: it would hold the DDP model past `end_training`, and the process group would
        # then be freed at return with the GIL held, the hang end_training exists to avoid.
        if stream:
            model, optimizer, adversary_optimizer = accelerator.prepare(model, optimizer, adversary_optimizer)
        else:
            model, optimizer, loader, adversary_optimizer = accelerator.prepare(
                model, optimizer, loader, adversary_optimizer
            )
        max_steps, epochs, warmup = _run_length(args, None if stream else len(loader))
        schedulers = [cosine_with_warmup(o, warmup, max_steps) for o in (optimizer, adversary_optimizer) if o]
        # an EMA teacher lives outside the module tree: built from the prepared student's weights, on its device
        unwrapped = accelerator.unwrap_model(model)
        extra_state = [unwrapped.teacher] if hasattr(unwrapped, "teacher") else []
        # schedulers and the EMA teacher are checkpointed as JSON and safetensors by checkpoints.py, not registered
        # with accelerate, which would pickle them and unpickle them on resume with weights_only=False
        extra_objects = [*schedulers, *extra_state]

        # ---- resume: the same run, from its newest (or the given) checkpoint -----------------------------------
        layout = {
            "num_processes": world,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "seed": args.seed,
        }
        if stream:  # where each worker's stream stands depends on these too
            layout.update(streaming_workers=stream.workers, shuffle_buffer=args.shuffle_buffer)
        # what the checkpoint must have been written by: the same method and model config
        identity = {"method": args.method, "config": _config_fields(config)}
        state, resume_path, run_id = _resume(accelerator, args, run_id, layout, identity, extra_objects)
        if stream is not None:
            if resume_path is not None:
                positions = state["stream_positions"][accelerator.process_index]
                stream.resume_from(positions, state["step"] * args.grad_accum)
            check_every_node_has_data(stream, accelerator)

        plan = run_plan(args, spec, config, model, world, effective_batch, lr, max_steps, epochs, warmup, init_report)
        if accelerator.is_main_process:
            print(format_plan(plan), flush=True)
        summary = {
            "method": args.method,
            "recipe": args.recipe,
            "model_size": args.model_size if spec.encoder_presets else None,
            "plan": {k: v for k, v in plan.items() if k != "output"},  # the summary is pushed: no local path
            "init_from": _init_record(args, init_report),
            "dataset": description,
            "dataset_id": hub_dataset_id(args.dataset),
            "num_samples": num_samples,
            "streaming": args.streaming,
            "image_column": image_column,
            "num_processes": world,
            "effective_batch_size": effective_batch,
            "learning_rate": lr,
            "warmup_steps": warmup,
            "max_steps": max_steps,
            "epochs": epochs,
            "mixed_precision": args.mixed_precision,
            "hardware": hardware_description(accelerator),
        }
        set_aside = _start_records(accelerator, args, run_id, resume_path)

        # ---- train -----------------------------------------------------------------------------------------------
        loop = TrainingLoop(
            accelerator,
            args,
            spec,
            model,
            optimizer,
            adversary_optimizer,
            schedulers,
            state,
            max_steps,
            description,
            stream=stream,
        )
        checkpoint = partial(
            _checkpoint, accelerator, args, state, dict(layout=layout, run_id=run_id, **identity), extra_objects
        )
        wall = loop.run(loader, transform, epochs, checkpoint)

        # ---- finish: the final model, pictures and records, then the hub -------------------------------------------
        summary.update(loop.summary(wall, resume_path))
        in_sync = ranks_in_sync(accelerator, model, extra_state)
        summary["ranks_in_sync"] = in_sync
        state_dict = accelerator.get_state_dict(model)
        save_problem = None
        if accelerator.is_main_process:
            save_problem = _save_final(
                accelerator, model, spec, args, run_id, summary, state_dict, config, raw, image_column
            )
        # end_training destroys the process group. Without this barrier the other ranks did so while the main
        # process was still saving, and with 2 CPU processes the main one then blocked for good at teardown. The
        # broadcast is that barrier, and tells every process whether the save failed, so that all stop alike.
        save_problem = _broadcast(accelerator, save_problem)
        saved = save_problem is None
        del model, optimizer, adversary_optimizer, loader, schedulers, loop, unwrapped
        end_training(accelerator)
        if accelerator.is_main_process:
            print(
                f"done: {summary['steps']} steps in {wall:.1f}s ({summary['images_per_second']} images/s), final loss "
                f"{summary['final_loss']}, skipped images {len(summary['skipped_images'])}; model in {args.output_dir}"
            )
        if save_problem:
            raise TrainingError(save_problem)
        if not in_sync:
            raise TrainingError("parameters differ across processes at the end of training")
        if args.push_to_hub and accelerator.is_main_process:
            # after the process group is gone: an upload can outlast any collective timeout, and other ranks are done
            from ..hub import push_folder

            commit = push_folder(args.output_dir, args.push_to_hub)
            print(f"pushed to {commit.commit_url}")
        return summary
    finally:
        if lock is not None:
            if set_aside and not saved:
                _keep_previous_run(Path(args.output_dir), run_id)
            lock.release()


def run_plan(args, spec, config, model, world, effective_batch, lr, max_steps, epochs, warmup, init_report) -> dict:
    """What the run will do and why, as `format_plan` prints it before step 1 (and the summary and card record)."""
    reasons = args.reasons
    # from the sizes, not config.grid_size: a method may bring a config class of its own (bench_quality's peer)
    grid = "x".join(str(side // config.patch_size) for side in to_2tuple(config.image_size))
    encoder = None
    if hasattr(config, "hidden_size") and hasattr(model, "vit"):
        size = "the checkpoint's" if args.init_from else f"{args.model_size} (the {args.recipe} recipe's)"
        encoder = (
            f"ViT, {size}: {config.num_hidden_layers} blocks, width {config.hidden_size}, "
            f"{config.num_attention_heads} heads ({model.vit.num_parameters():,} parameters)"
        )
    length = f"{max_steps:,}" + (f" ({epochs} epoch{'s' if epochs > 1 else ''})" if epochs else "")
    length += f", warm-up {warmup:,}"
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
        "effective batch": f"{effective_batch} ({args.batch_size} per process x {world} process(es) x "
        f"{args.grad_accum} accumulation)",
        "learning rate": f"{lr:.3g} ({how_lr})",
        "weights": init_report[0].removeprefix("init from ") if init_report else "fresh (random initialisation)",
        "output": args.output_dir,
    }


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


def _keep_previous_run(folder: Path, run_id: str | None) -> None:
    """After a run that saved no model: the folder goes back to the earlier run whose model it still holds (its
    `training_args.json` restored), unless this run wrote checkpoints, which a resume must be able to find."""
    from .checkpoints import list_checkpoints

    if run_id is not None and list_checkpoints(folder, run_id):
        logger.info("%s keeps this run's training_args.json: its checkpoints can be resumed", folder)
        return
    restore_previous_args(folder)


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


def end_training(accelerator) -> None:
    """Tear the process group down, once the caller has dropped its model, optimizers and loader.

    DDP's reducer must not hold the last reference to the process group: torch frees it from there with the GIL
    held, while a gloo worker thread, still releasing the last barrier's work, waits for the GIL (pytorch#56297).
    Freed here, the reducer lets go first; destroy_process_group then frees the group with the GIL released.
    Without this, about 1 in 20 two-process CPU runs hung for good after saving."""
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def check_distributed_setup(spec, config=None, teacher: bool = False) -> None:
    """Refuse, in one line, the accelerate setups that would train wrongly, as `accelerate launch` announces them in
    the environment (ACCELERATE_USE_FSDP, ACCELERATE_USE_DEEPSPEED, FSDP_VERSION, ACCELERATE_DEEPSPEED_ZERO_STAGE):

    - FSDP or DeepSpeed on CPU processes: accelerate 1.x shards only on accelerators and would quietly train with
      DDP while the config said otherwise;
    - a `config` with an adversary (ADIOS's occlusion model, MAE's learned masks) under DeepSpeed: the adversary
      has its own optimizer, and a DeepSpeed engine drives exactly one, so its updates would be folded into the
      model's;
    - `teacher` (C-MAE, ADIOS-BYOL's EMA teacher) under FSDP1 or ZeRO-3: the teacher is updated from the student's
      parameters, which there are flat local shards; FSDP2's DTensors are gathered whole for it."""
    fsdp, deepspeed = _env_flag("ACCELERATE_USE_FSDP"), _env_flag("ACCELERATE_USE_DEEPSPEED")
    engine = "FSDP" if fsdp else "DeepSpeed"
    if (fsdp or deepspeed) and needs_cpu_process_group():
        raise ValueError(
            f"{engine} on processes without GPUs is refused: accelerate shards only on accelerators and would train "
            "this run with DDP instead. Launch with --multi_gpu (DDP) on CPUs, or run on GPUs"
        )
    if deepspeed and config is not None and spec.adversary_for(config) is not None:
        raise ValueError(
            f"--method {spec.name} under DeepSpeed is refused: its adversary trains with a second optimizer and a "
            "DeepSpeed engine drives one. Use DDP or FSDP (accelerate config)"
        )
    if teacher and fsdp and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError(
            f"--method {spec.name} under FSDP1 is refused: its EMA teacher is updated from whole parameters, which "
            "FSDP1 keeps as flat shards. Set fsdp_version: 2 in the accelerate config"
        )
    if teacher and deepspeed and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise ValueError(
            f"--method {spec.name} under ZeRO stage 3 is refused: its EMA teacher is updated from whole parameters, "
            "which ZeRO-3 partitions. Use ZeRO stage 1 or 2, or FSDP2"
        )


def _accelerator(args: PretrainArguments):
    """The run's `Accelerator`: a CPU (gloo) process group when launched on several processes without GPUs, a
    seedable sampler so the data order follows --seed, and trackers when asked for."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    fresh_accelerate_state()
    accelerator = Accelerator(
        cpu=needs_cpu_process_group(),
        gradient_accumulation_steps=args.grad_accum,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    setup_logging(accelerator.is_main_process)
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate would train in float32 while the summary and card said fp16
        raise ValueError("--mixed-precision='fp16' is invalid on a CPU: allowed there, bf16 or no")
    return accelerator


def _data(args: PretrainArguments, spec, config, raw, image_column: str, accelerator):
    """(transform, loader, stream): each sample decoded, cropped with the method's crop scale and given the
    method's per-sample inputs, all from the sample's own generator (seed, epoch, index). `stream` is the
    `StreamingImages` under --streaming, else None."""
    augment = ImageAugmentation.from_config(config, train=True, scale=spec.crop_scale)
    augment.jpeg_draft = args.jpeg_draft
    height, width = (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
    grid = (height // config.patch_size, width // config.patch_size)
    sample_inputs = partial(spec.sample_inputs, config, grid) if spec.sample_inputs else None
    # uint8 crops from the workers, normalised on the device (TrainingLoop): float32 would be 4x the bytes through
    # the workers' shared memory, which cost more per image than the crop (benchmarks/RESULTS.md, issue #20)
    transform = PretrainingTransform(image_column, augment, args.seed, sample_inputs, normalize=False)
    collator = Collator((config.num_channels, height, width), dtype=torch.uint8)
    if args.streaming:
        stream, loader = streaming_loader(args, raw, image_column, transform, collator, accelerator)
        return transform, loader, stream
    num_processes = accelerator.num_processes
    dataset = prepare_dataset(raw, image_column, transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= args.batch_size * num_processes,
        num_workers=args.num_workers,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed),
    )
    return transform, loader, None


def _optimizers(model, spec, config, args: PretrainArguments, lr: float):
    """(AdamW of the model, AdamW of the method's adversary or None). The adversary's parameters (ADIOS's
    occlusion model) are left to its own optimizer; it is prepared with the rest, so accelerate checkpoints it."""
    adversary = spec.adversary_for(config)
    theirs = adversary.parameters(model) if adversary else []
    optimizer = adamw(param_groups(model, args.weight_decay, exclude=theirs), lr=lr, betas=spec.betas)
    if adversary is None:
        return optimizer, None
    groups = param_groups(model, args.weight_decay, only=theirs)
    return optimizer, adamw(groups, lr=adversary.learning_rate(config), betas=spec.betas)


def _resume(accelerator, args: PretrainArguments, run_id, layout: dict, identity: dict, extra_objects: list):
    """(state, checkpoint resumed from or None, run id): the loop's state, fresh or restored with the model,
    optimizers, schedulers and EMA teacher from a checkpoint this run wrote."""
    state = {
        "epoch": 0,
        "batches_in_epoch": 0,
        "step": 0,
        "loss_history": [],
        "metrics_history": [],
        "non_finite_steps": [],
        "skipped": {},
    }
    resume_path = (
        resolve_resume(args.output_dir, args.resume_from_checkpoint, run_id) if args.resume_from_checkpoint else None
    )
    if args.resume_from_checkpoint and resume_path is None:
        logger.warning("no checkpoint of this run to resume from in %s; starting from step 0", args.output_dir)
    if resume_path is not None:
        saved = load_trainer_state(resume_path)
        _check_resumable(resume_path, saved, layout, identity)
        verify_loadable(resume_path)  # every pickle-format file, with weights_only=True, before accelerate reads it
        try:
            accelerator.load_state(str(resume_path))
            load_extra_state(extra_objects, resume_path)
        except (SafetensorError, RuntimeError, KeyError, TypeError) as err:
            raise ValueError(f"cannot resume from {resume_path}: {one_line(err)}") from None
        state.update(saved)
        run_id = saved.get("run_id") or run_id
        logger.info("resumed from %s at step %d", resume_path, state["step"])
    return state, resume_path, run_id or new_run_id()


def _start_records(accelerator, args: PretrainArguments, run_id: str, resume_path) -> bool:
    """The output folder for a new run, `training_args.json`, and the trackers. A new run in a folder of an earlier
    one sets that run's `training_args.json` aside (restored if this run saves no model) and leaves its model, card
    and pictures in place: `_save_final` replaces them only once the new model is there. Returns whether it set
    one aside (only then is there anything of this run's to undo)."""
    set_aside = False
    if accelerator.is_main_process:
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        set_aside = resume_path is None and set_aside_previous_args(folder)
        if set_aside:
            logger.info("%s holds an earlier run: its files stay until this run's model is saved", folder)
        write_atomic(folder / "training_args.json", json.dumps({**asdict(args), "run_id": run_id}, indent=2))
    if args.report_to != "none":
        accelerator.init_trackers("hf-mim", config={k: v for k, v in asdict(args).items() if not isinstance(v, dict)})
    return set_aside


def _checkpoint(accelerator, args, state, record: dict, extra_objects, step: int, epoch: int, batches: int, skips):
    """A checkpoint of optimizer step `step`, at batch `batches` of epoch `epoch`, with what resuming checks."""
    state.update(epoch=epoch, batches_in_epoch=batches, skipped=skips.skipped, **record)
    save_checkpoint(accelerator, args.output_dir, step, state, args.checkpoints_total_limit, extra_objects)


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

    def run(self, loader, transform, epochs: int, checkpoint) -> float:
        """Train to `max_steps`; returns the wall time in seconds."""
        from tqdm.auto import tqdm

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
        if self.stream is not None:
            self._run_stream(loader, checkpoint, progress)
        for epoch in range(state["epoch"], epochs or 0):
            if self.step >= self.max_steps:
                break
            transform.epoch = epoch
            loader.set_epoch(epoch)
            skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            for batches_in_epoch, batch in enumerate(batches, start=skip + 1):
                if self._train_on(batch, progress) and args.checkpointing_steps:
                    if self.step % args.checkpointing_steps == 0:
                        checkpoint(self.step, epoch, batches_in_epoch, self.skips)
                if self.step >= self.max_steps:
                    break
            self._check_something_decoded("in a whole epoch")
        progress.close()
        return time.perf_counter() - self.start

    def _run_stream(self, loader, checkpoint, progress) -> None:
        """--streaming: one pass of the endless loader to `max_steps`. The checkpoint holds every process's
        stream positions (per worker: epoch, examples read), gathered at the step it is written."""
        from accelerate.utils import gather_object, send_to_device

        positions = [list(p) for p in self.stream.start]
        batches = iter(loader)
        while self.step < self.max_steps:
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
        if self.step - self.first_step == ETA_AFTER_STEPS and self.step < self.max_steps:
            per_step = (time.perf_counter() - self.start) / ETA_AFTER_STEPS
            remaining = per_step * (self.max_steps - self.step)
            logger.info(
                "%d steps took %.2f s each: about %s to finish %d steps",
                ETA_AFTER_STEPS, per_step, _duration(remaining), self.max_steps,
            )  # fmt: skip
        return True

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
        progress.set_postfix(loss=f"{mean_loss:.4f}")
        self.accelerator.log(logs, step=step)
        self.logged = _Sums(torch.zeros_like(logged.loss))

    def summary(self, wall: float, resume_path) -> dict:
        """What the run did, for `training_summary.json` (after every process has finished training)."""
        from accelerate.utils import gather_object

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
        )


#: Steps after which the run logs its estimated time to finish (the first steps, warm caches aside, are typical).
ETA_AFTER_STEPS = 20


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fresh_accelerate_state() -> None:
    """Forget the accelerate state an earlier run in this process left: accelerate keeps one per process and refuses
    an `Accelerator` with another mixed precision ("AcceleratorState has already been initialized"), so a second
    `pretrain` call in a notebook would fail. Launched processes (WORLD_SIZE > 1) run once and keep theirs."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def needs_cpu_process_group() -> bool:
    """Whether to ask accelerate for a CPU (gloo) process group. accelerate forms one only when told the run is on
    CPU; launched by torchrun or `accelerate launch --multi_gpu` on a machine without GPUs, each process would
    otherwise run alone, all of them writing the same output folder."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _claim_output_dir(accelerator, args: PretrainArguments):
    """(run id, lock): the main process checks that the output folder may be written and takes its lock; every
    process learns the outcome, so a refusal stops all of them at once instead of leaving some waiting."""
    from accelerate.utils import broadcast_object_list

    folder = Path(args.output_dir)
    outcome: list = [None, None]  # problem, run id
    lock = None
    if accelerator.is_main_process:
        try:
            check_not_in_dataset(folder, args.dataset)
            check_output_dir(folder, args.overwrite_output_dir)
            # resuming: the run this folder records, if any (None lets `latest` take the newest checkpoint there
            # and adopt its run); else a new run
            run_id = previous_run_id(folder) if args.resume_from_checkpoint else new_run_id()
            lock = RunLock(folder, run_id or new_run_id())
            lock.acquire()
            outcome = [None, run_id]
        except (RunFolderError, OSError) as err:
            outcome = [one_line(err), None]
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list(outcome)
    if outcome[0]:
        raise RunFolderError(outcome[0])
    return outcome[1], lock


def _broadcast(accelerator, value):
    """`value` of the main process, on every process (and a barrier: every process waits for the main one)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _save_final(accelerator, model, spec, args, run_id, summary, state_dict, config, raw, image_column) -> str | None:
    """The final model, pictures and records (main process): written into a staging folder inside the output
    folder, then moved in, the weights first and `training_summary.json` last. Returns None, or why nothing was
    saved (non-finite weights, a full disk): the previous files of the folder are then untouched."""

    from .checkpoints import list_checkpoints

    folder = Path(args.output_dir)
    last = next(iter(reversed(list_checkpoints(folder, run_id))), None)
    kept = f"the last checkpoint kept is {last}" if last else "no checkpoint was written"
    bad = [name for name, tensor in state_dict.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        return (
            f"the trained weights are not finite ({len(bad)} tensors, for example {bad[0]}): the model was not saved "
            f"and {kept}. Lower the learning rate"
        )
    unwrapped = accelerator.unwrap_model(model)
    drawn = unwrapped
    if parameters_are_sharded(accelerator):
        # a forward of the sharded model on the main process alone would wait for the other ranks: the pictures
        # are drawn by a whole copy built from the gathered weights
        drawn = spec.pretraining_class(config)
        drawn.load_state_dict(state_dict)
    staging = folder / f".tmp-final-{run_id}"
    stale = previous_outputs(folder)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copy2(folder / "training_args.json", staging / "training_args.json")  # the card reads it
        pictured = _held_out_images(args) or (raw, image_column, args.split)
        summary["reconstruction"] = save_pictures(drawn, spec, *pictured, config, summary, staging)
        # the records and pictures first: save_pretrained builds the model card from what the folder holds
        (staging / "training_summary.json").write_text(json.dumps(summary, indent=2))
        unwrapped.save_pretrained(staging, state_dict=state_dict)
        if hasattr(unwrapped, "teacher"):
            from .callbacks import TEACHER_FILE, save_teacher

            save_teacher(unwrapped.teacher, str(staging / TEACHER_FILE))
        kept_files, stale = move_into_place(staging, folder, stale)
    except Exception as err:  # noqa: BLE001 - safetensors and torch.save report a full disk as their own errors
        shutil.rmtree(staging, ignore_errors=True)
        if not is_write_failure(err):
            raise
        if is_no_space(err, folder):
            needed = sum(t.numel() * t.element_size() for t in state_dict.values())
            return no_space_message(folder, needed, last)
        return f"could not save the model in {folder}: {one_line(err)}; {kept}"
    forget_previous_args(folder)
    if stale:
        logger.info("removed the previous run's %s from %s (this run did not write them)", ", ".join(stale), folder)
    if kept_files:
        logger.info("kept %s in %s: written by a person, not regenerated", ", ".join(kept_files), folder)
    return None


def parameters_are_sharded(accelerator) -> bool:
    """FSDP and DeepSpeed hold each parameter in shards across the processes (ZeRO-1/2 do not, but telling the
    stages apart buys nothing here: the gathered copy is right for every stage)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _config_fields(config) -> dict:
    """The config as JSON-able fields, without what transformers adds on saving (versions, names)."""
    fields = config.to_diff_dict()
    for key in ("transformers_version", "_name_or_path", "architectures", "auto_map"):
        fields.pop(key, None)
    return json.loads(json.dumps(fields, default=str))


def _check_resumable(path: Path, saved: dict, layout: dict, identity: dict) -> None:
    """A checkpoint resumes only the run that wrote it: the same method and model config, and the same processes,
    batch, accumulation and seed (or the data position would not line up). One line names what differs."""
    if "method" in saved and saved["method"] != identity["method"]:
        raise ValueError(
            f"--resume-from-checkpoint {path} was written by --method {saved['method']}, not {identity['method']}"
        )
    if "config" in saved and saved["config"] != identity["config"]:
        keys = sorted(set(saved["config"]) | set(identity["config"]))
        differ = [k for k in keys if saved["config"].get(k) != identity["config"].get(k)]
        shown = ", ".join(
            f"{k}={saved['config'].get(k)!r} there, {identity['config'].get(k)!r} here" for k in differ[:3]
        )
        raise ValueError(f"--resume-from-checkpoint {path} was written with another model config: {shown}")
    saved_layout = saved.get("layout", {})
    differs = {k: (saved_layout.get(k), v) for k, v in layout.items() if saved_layout.get(k) != v}
    if differs:
        raise ValueError(
            f"cannot resume from {path}: it was written with "
            + ", ".join(f"{k}={old}" for k, (old, _) in differs.items())
            + " but this run has "
            + ", ".join(f"{k}={new}" for k, (_, new) in differs.items())
            + "; the data position would not line up. Resume with the same settings"
        )


def write_atomic(path: Path, text: str) -> None:
    """`path` holds its old text or the new one, never a part: written beside it, then renamed over it. A failed
    write (a full disk) leaves no temporary file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _held_out_images(args: PretrainArguments):
    """(dataset, image column, split) of images the run did not train on, for its pictures and reconstruction error:
    the built-in digits' test split; None for other data, whose held-out images hf_mim cannot know."""
    if args.dataset in (None, BUILTIN_DATASET) and args.split == "train":
        return builtin_digits("test"), "image", "test"
    return None


def save_pictures(model, spec, raw, image_column, split, config, summary, output_dir, draw_model=True) -> dict | None:
    """loss_curve.png from the loss history, and the method's picture (reconstructions, ADIOS masks, tokens) of the
    first images of `raw`, resized and normalised without augmentation. For a pixel-target method, also returns the
    reconstruction error (`reconstruction_error`) on up to 512 of those images. A picture that fails is logged, not
    fatal: the trained weights matter more than their illustration."""
    from ..model_cards.pictures import reconstruction_error, save_loss_curve, save_method_pictures
    from .transforms import ImageAugmentation, open_image

    try:
        if summary["loss_history"]:
            save_loss_curve(summary["loss_history"], Path(output_dir, "loss_curve.png"), summary["method"])
        if not draw_model:
            logger.info("parameters are sharded: no reconstruction or mask picture (draw it from the saved model)")
            return None
        transform = ImageAugmentation.from_config(config)
        pixel_target = spec.picture is not None and spec.picture.kind == "reconstruction"
        wanted = 512 if pixel_target else 8
        images = []
        # undecoded, so that a bad file is skipped here (as in training) instead of ending the iteration
        rows = raw.decode(False) if isinstance(raw, datasets.IterableDataset) else undecoded(raw)
        for row in itertools.islice(rows, 4 * wanted):
            try:
                images.append(transform(open_image(row[image_column]), None))
            except Exception:  # noqa: BLE001  (bad files are skipped in training too)
                continue
            if len(images) == wanted:
                break
        if not images:
            return None
        images = torch.stack(images)
        save_method_pictures(model, images[:8], output_dir)
        if pixel_target:
            error = reconstruction_error(model, images)
            return {"split": split, **{k: round(v, 6) if isinstance(v, float) else v for k, v in error.items()}}
    except Exception as err:  # noqa: BLE001
        logger.warning("could not draw the model-card pictures: %s", err)
    return None


def _scalar_fields(outputs) -> dict[str, torch.Tensor]:
    """The output's scalar tensors besides the loss (R-MAE's two losses, BEiT's accuracy, ...): logged like it."""
    return {
        name: value.detach().float()
        for name, value in outputs.items()
        if name != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0
    }


def _tensors_of(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors_of(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors_of(value)]
    return []


def ranks_in_sync(accelerator, model, extra_state=()) -> bool:
    """Every process holds the same parameters and floating-point buffers (EMA codebooks, position tables): a
    float64 checksum per process, compared."""
    if accelerator.num_processes == 1 or accelerator.distributed_type.name not in ("MULTI_CPU", "MULTI_GPU"):
        return True
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    unwrapped = accelerator.unwrap_model(model)
    tensors = list(unwrapped.parameters()) + [b for b in unwrapped.buffers() if b.is_floating_point()]
    tensors += [t for obj in extra_state for t in _tensors_of(obj.state_dict())]  # an EMA teacher, for one
    for param in tensors:
        p = param.detach().to(accelerator.device).double()
        total += torch.stack([p.sum(), (p * p).sum()])
    sums = accelerator.gather(total[None]).cpu()
    return bool(torch.equal(sums, sums[:1].expand_as(sums)))


def hardware_description(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    cpu = platform.processor() or platform.machine()
    return f"{accelerator.num_processes} process(es) on {cpu}, {os.cpu_count()} CPUs"
