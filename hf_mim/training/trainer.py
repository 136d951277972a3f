"""`hf-mim pretrain`: the Accelerate training loop.

One process, multi-process DDP (`accelerate launch`), FSDP or DeepSpeed through the user's accelerate config. The
loop is accelerate's canonical one (prepare, accumulate, save_state / load_state, skip_first_batches,
trackers); what a method needs beyond a loss goes through its `TrainingMethod` hook.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError

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
)
from .methods import ENCODER_PRESETS, RECIPES, SMALL_DATASET_IMAGES, SMALL_IMAGE_SIZE, TRAINING_METHODS
from .run_folder import (
    RunFolderError,
    RunLock,
    check_output_dir,
    clear_previous_outputs,
    is_no_space,
    move_into_place,
    new_run_id,
    no_space_message,
    previous_run_id,
)
from .transforms import MAETransform

logger = logging.getLogger("hf_mim.pretrain")

# Testing aid: exit abruptly (no cleanup, like a kill) right after the checkpoint of this step is written.
_EXIT_AFTER_CHECKPOINT = "HF_MIM_EXIT_AFTER_CHECKPOINT"


class TrainingError(RuntimeError):
    pass


@dataclass
class PretrainArguments:
    """Every `hf-mim pretrain` flag; the CLI's `--help` documents each. None means "the default for the dataset"
    (see `resolve_defaults`)."""

    method: str = "mae"
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    image_column: str | None = None
    output_dir: str = "outputs/pretrain"
    overwrite_output_dir: bool = False
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 64
    grad_accum: int = 1
    base_lr: float | None = None
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    model_size: str | None = None
    recipe: str = "auto"
    tokenizer: str | None = None
    config: str | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    checkpointing_steps: int | None = None
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    push_to_hub: str | None = None
    report_to: str = "none"
    num_workers: int | None = None
    logging_steps: int = 10
    max_non_finite_steps: int = 5
    config_overrides: dict = field(default_factory=dict)


# Defaults that depend on where the data comes from: the built-in digits are 8x8 images, shown to the model at 32 px
# (an 8x8 grid of 4 px patches). Everything else follows the recipe.
BUILTIN_IMAGE_SIZE = 32
DEFAULT_IMAGE_SIZE = 224
RECIPE_MODEL_SIZE = {"small": "mini", "paper": "base"}
PAPER_EPOCHS = 1  # a smoke-test default: the papers train for 300-1600 epochs; pass --epochs


def default_patch_size(image_size) -> int:
    """16 px patches from 128 px up (ViT's); below, the largest size that cuts the shorter side into at least 8 patches
    evenly (4 px at 32 px, 8 px at 64 px), so small images still make a grid worth masking."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    side = min(height, width)
    if side >= 128:
        return 16
    for patch in range(max(1, side // 8), 0, -1):
        if height % patch == 0 and width % patch == 0:
            return patch
    return 1


def choose_recipe(args: PretrainArguments, num_images: int) -> str:
    """`--recipe auto`: "small" when the images are at most SMALL_IMAGE_SIZE px a side or the dataset has fewer than
    SMALL_DATASET_IMAGES images, else "paper". The scale of the run decides, not where the data comes from."""
    if args.recipe != "auto":
        return args.recipe
    size = args.image_size if isinstance(args.image_size, int) else min(args.image_size)
    return "small" if size <= SMALL_IMAGE_SIZE or num_images < SMALL_DATASET_IMAGES else "paper"


def resolve_defaults(args: PretrainArguments, num_images: int) -> PretrainArguments:
    """Fill in what the user left as None: the image and patch size, then the recipe, then what the recipe sets
    (model size, learning rate, epochs, the method's config fields; explicit `config_overrides` win)."""
    if args.image_size is None:
        args.image_size = BUILTIN_IMAGE_SIZE if args.dataset in (None, BUILTIN_DATASET) else DEFAULT_IMAGE_SIZE
    if args.patch_size is None:
        args.patch_size = default_patch_size(args.image_size)
    args.recipe = choose_recipe(args, num_images)
    if args.num_workers is None:
        # decoding an 8x8 PNG costs microseconds; on two cores a worker would only take CPU time from the model
        args.num_workers = 0 if args.dataset in (None, BUILTIN_DATASET) else 2
    method = TRAINING_METHODS[args.method]
    recipe = method.recipe(args.recipe)
    if args.model_size is None:
        args.model_size = RECIPE_MODEL_SIZE[args.recipe]
    if args.base_lr is None:
        args.base_lr = recipe.base_lr
    if args.max_steps is None and args.epochs is None:
        args.epochs = recipe.epochs or (PAPER_EPOCHS if args.recipe == "paper" else 1)
    args.config_overrides = {**recipe.config, **args.config_overrides}
    return args


def validate(args: PretrainArguments) -> None:
    def bad(flag, value, allowed):
        raise ValueError(f"--{flag.replace('_', '-')}={value!r} is invalid: {allowed}")

    if args.method not in TRAINING_METHODS:
        bad("method", args.method, f"one of {sorted(TRAINING_METHODS)}")
    if args.model_size is not None and args.model_size not in ENCODER_PRESETS:
        bad("model_size", args.model_size, f"one of {sorted(ENCODER_PRESETS)}")
    if args.recipe not in ("auto", *RECIPES):
        bad("recipe", args.recipe, f"auto or one of {RECIPES}")
    if args.tokenizer is not None and args.method != "beit":
        bad("tokenizer", args.tokenizer, "only used with --method beit")
    for name in ("batch_size", "grad_accum", "logging_steps", "max_non_finite_steps"):
        if getattr(args, name) < 1:
            bad(name, getattr(args, name), "a positive int")
    if args.num_workers is not None and args.num_workers < 0:
        bad("num_workers", args.num_workers, "0 (load in the main process) or more")
    for name in ("max_steps", "epochs", "checkpointing_steps", "checkpoints_total_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            bad(name, value, "a positive int")
    if args.push_to_hub is not None:
        from ..hub import check_repo_id

        check_repo_id(args.push_to_hub, "--push-to-hub")  # before training, not after hours of it
    if args.mixed_precision not in ("no", "fp16", "bf16"):
        bad("mixed_precision", args.mixed_precision, "no, fp16 or bf16")
    if args.report_to not in ("none", "tensorboard", "wandb"):
        bad("report_to", args.report_to, "none, tensorboard or wandb")
    for name in ("lr", "base_lr"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad(name, value, "a positive, finite float")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        bad("weight_decay", args.weight_decay, "a finite float, 0 or more")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        bad("warmup_steps", args.warmup_steps, "a non-negative int")
    if args.warmup_steps is not None and args.max_steps is not None and args.warmup_steps >= args.max_steps:
        bad("warmup_steps", args.warmup_steps, f"fewer than --max-steps={args.max_steps}: the run would end in warm-up")
    tracker_package = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}.get(args.report_to, ())
    if tracker_package and not any(importlib.util.find_spec(name) for name in tracker_package):
        # accelerate would only warn and log nothing
        bad("report_to", args.report_to, f"needs the {tracker_package[0]} package: pip install {tracker_package[0]}")


def build_config(args: PretrainArguments, method):
    overrides = dict(args.config_overrides)
    if args.config:
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--config {args.config}: not a readable JSON object ({_one_line(err)})") from None
        if not isinstance(fields, dict):
            raise ValueError(
                f"--config {args.config} holds a JSON {type(fields).__name__}; allowed: an object of config fields"
            )
        overrides.update(fields)
    if args.tokenizer is not None:
        overrides["tokenizer_name_or_path"] = args.tokenizer
    fields = {**ENCODER_PRESETS[args.model_size], "image_size": args.image_size, "patch_size": args.patch_size}
    return method.build_config(fields, overrides)


def param_groups(model, weight_decay: float, only=None, exclude=()) -> list[dict]:
    """Weight decay on matrices only (nanoGPT / MAE): no decay on biases, norms, tokens and position tables.
    `only` / `exclude`: parameters to keep to / to leave out (a second optimizer's)."""
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    only = None if only is None else {id(p) for p in only}
    exclude = {id(p) for p in exclude}
    decay, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in exclude and (only is None or id(param) in only):
            (rest if name in no_decay or param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one kernel over all tensors instead of a loop of elementwise ops per tensor),
    the default of transformers' Trainer too. The parameters are still on the CPU here, where torch also has the
    fused kernel; it falls back to the per-tensor loop for dtypes or devices the kernel lacks."""
    params = [p for group in groups for p in group["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def pretrain(args: PretrainArguments) -> dict:
    """Run pretraining; returns the summary also written to OUTPUT_DIR/training_summary.json."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    args = replace(args, config_overrides=dict(args.config_overrides))  # resolved below; the caller's stays as given
    validate(args)  # before anything is loaded; again once the defaults are resolved
    method = TRAINING_METHODS[args.method]()
    fresh_accelerate_state()
    accelerator = Accelerator(
        cpu=needs_cpu_process_group(),
        gradient_accumulation_steps=args.grad_accum,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    _setup_logging(accelerator)
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate would train in float32 while the summary and card said fp16
        raise ValueError("--mixed-precision='fp16' is invalid on a CPU: allowed there, bf16 or no")
    run_id, lock = _claim_output_dir(accelerator, args)
    try:
        return _pretrain(args, method, accelerator, run_id)
    finally:
        if lock is not None:
            lock.release()


def _claim_output_dir(accelerator, args: PretrainArguments):
    """(run id, lock): the main process checks that the output folder may be written and takes its lock; every
    process learns the outcome, so a refusal stops all of them at once instead of leaving some waiting."""
    from accelerate.utils import broadcast_object_list

    folder = Path(args.output_dir)
    outcome: list = [None, None]  # problem, run id
    lock = None
    if accelerator.is_main_process:
        try:
            check_output_dir(folder, args.overwrite_output_dir, bool(args.resume_from_checkpoint))
            # resuming: the run this folder records, if any (None lets `latest` take the newest checkpoint there
            # and adopt its run); else a new run
            run_id = previous_run_id(folder) if args.resume_from_checkpoint else new_run_id()
            lock = RunLock(folder, run_id or new_run_id())
            lock.acquire()
            outcome = [None, run_id]
        except (RunFolderError, OSError) as err:
            outcome = [_one_line(err), None]
    if accelerator.num_processes > 1:
        outcome = broadcast_object_list(outcome)
    if outcome[0]:
        raise RunFolderError(outcome[0])
    return outcome[1], lock


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _pretrain(args: PretrainArguments, method, accelerator, run_id: str) -> dict:
    from accelerate.utils import gather_object, set_seed

    set_seed(args.seed)

    # ---- data -------------------------------------------------------------------------------------------
    raw, description = load_pretraining_dataset(args.dataset, args.dataset_config, args.split)
    image_column = find_image_column(raw, args.image_column)
    check_size(raw, accelerator.num_processes, description)
    args = resolve_defaults(args, len(raw))
    validate(args)
    config = build_config(args, method)
    augment = MAETransform(
        config.image_size, config.image_mean, config.image_std, config.num_channels, scale=method.crop_scale
    )
    transform = PretrainingTransform(image_column, augment, args.seed, method.sample_extras(config))
    dataset = prepare_dataset(raw, image_column, transform)
    height, width = (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= args.batch_size * accelerator.num_processes,
        num_workers=args.num_workers,
        collate_fn=Collator((config.num_channels, height, width)),
        generator=torch.Generator().manual_seed(args.seed),
    )

    # ---- model, optimizer, schedule -----------------------------------------------------------------------
    model = method.build_model(config)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    world = accelerator.num_processes
    effective_batch = args.batch_size * args.grad_accum * world
    lr = args.lr if args.lr is not None else args.base_lr * effective_batch / 256
    second = method.second_parameters(model)
    optimizer = adamw(param_groups(model, args.weight_decay, exclude=second), lr=lr, betas=method.betas)
    # ADIOS's occlusion model: its own AdamW, prepared with the rest, so accelerate checkpoints and restores it
    optimizer2 = (
        adamw(
            param_groups(model, args.weight_decay, only=second),
            lr=method.second_learning_rate(config),
            betas=method.betas,
        )
        if second
        else None
    )
    if args.compile:
        # In place: torch.compile(model) would return a wrapper whose state-dict keys carry "_orig_mod.", and the
        # saved model would then load as freshly initialised weights.
        model.compile()
    if optimizer2 is None:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    else:
        model, optimizer, loader, optimizer2 = accelerator.prepare(model, optimizer, loader, optimizer2)
    steps_per_epoch = max(1, math.ceil(len(loader) / args.grad_accum))
    max_steps = args.max_steps or steps_per_epoch * args.epochs
    epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = args.warmup_steps if args.warmup_steps is not None else int(0.05 * max_steps)
    if warmup >= max_steps and args.warmup_steps is not None:
        raise ValueError(
            f"--warmup-steps={warmup} is invalid: fewer than the run's {max_steps} steps; it would end in warm-up"
        )
    scheduler = cosine_with_warmup(optimizer, warmup, max_steps)
    schedulers = [scheduler] + ([cosine_with_warmup(optimizer2, warmup, max_steps)] if optimizer2 else [])
    extra_state = method.checkpoint_objects()
    # schedulers and the EMA teacher are checkpointed as JSON and safetensors by checkpoints.py, not registered with
    # accelerate, which would pickle them and unpickle them on resume with weights_only=False
    extra_objects = [*schedulers, *extra_state]

    # ---- resume -------------------------------------------------------------------------------------------
    state = {
        "epoch": 0,
        "batches_in_epoch": 0,
        "loss_history": [],
        "metrics_history": [],
        "non_finite_steps": [],
        "skipped": {},
    }
    global_step = 0
    resume_path = (
        resolve_resume(args.output_dir, args.resume_from_checkpoint, run_id) if args.resume_from_checkpoint else None
    )
    if args.resume_from_checkpoint and resume_path is None:
        logger.warning("no checkpoint of this run to resume from in %s; starting from step 0", args.output_dir)
    layout = {"num_processes": world, "batch_size": args.batch_size, "grad_accum": args.grad_accum, "seed": args.seed}
    # what the checkpoint must have been written by: the same method and model config
    identity = {"method": args.method, "config": _config_fields(config)}
    if resume_path is not None:
        saved = load_trainer_state(resume_path)
        _check_resumable(resume_path, saved, layout, identity)
        verify_loadable(resume_path)  # every pickle-format file, with weights_only=True, before accelerate reads it
        try:
            accelerator.load_state(str(resume_path))
            load_extra_state(extra_objects, resume_path)
        except (SafetensorError, RuntimeError, KeyError, TypeError) as err:
            raise ValueError(f"cannot resume from {resume_path}: {_one_line(err)}") from None
        state.update(saved)
        global_step = state["step"]
        run_id = saved.get("run_id") or run_id
        logger.info("resumed from %s at step %d", resume_path, global_step)
    run_id = run_id or new_run_id()

    summary = {
        "method": args.method,
        "recipe": args.recipe,
        "model_size": args.model_size if method.uses_encoder_presets else None,
        "dataset": description,
        "dataset_id": hub_dataset_id(args.dataset),
        "num_samples": len(raw),
        "image_column": image_column,
        "num_processes": world,
        "effective_batch_size": effective_batch,
        "learning_rate": lr,
        "warmup_steps": warmup,
        "max_steps": max_steps,
        "epochs": epochs,
        "mixed_precision": args.mixed_precision,
        "hardware": _hardware(accelerator),
    }
    if accelerator.is_main_process:
        folder = Path(args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if resume_path is None:
            removed = clear_previous_outputs(folder)  # the folder is an hf-mim run's, or the user said to overwrite
            if removed:
                logger.info("removed the previous run's %s from %s", ", ".join(removed), folder)
        _write_atomic(folder / "training_args.json", json.dumps({**asdict(args), "run_id": run_id}, indent=2))
    if args.report_to != "none":
        accelerator.init_trackers("hf-mim", config={k: v for k, v in asdict(args).items() if not isinstance(v, dict)})

    # ---- loop ---------------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    skips = SkipReport(dict(state["skipped"]))
    progress = tqdm(
        total=max_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="pretrain"
    )
    method.on_train_start(accelerator, model, max_steps)
    model.train()
    zero = torch.zeros((), device=accelerator.device)
    step_loss, micro_steps = zero, 0  # the optimizer step being accumulated
    log_loss, log_steps = zero, 0  # good steps since the last log line
    step_metrics: dict[str, torch.Tensor] = {}  # the method's metrics, accumulated like the loss
    log_metrics: dict[str, torch.Tensor] = {}
    images_seen, start = 0, time.perf_counter()
    decoded_batches = zero.clone()
    consecutive_bad = 0
    done = global_step >= max_steps
    step_batches: list[tuple[dict, torch.Tensor]] = []  # this step's micro-batches, for a second optimizer
    for epoch in range(state["epoch"], epochs):
        if done:
            break
        transform.epoch = epoch
        loader.set_epoch(epoch)
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        batches_in_epoch = skip
        for batch in batches:
            batches_in_epoch += 1
            new = skips.add(batch.pop("skipped_names"), batch.pop("skipped_errors"))
            for name in new:
                logger.warning(
                    "[rank %d] skipped unreadable image %s: %s", accelerator.process_index, name, skips.skipped[name]
                )
            weight = batch.pop("loss_weight")
            decoded_batches = decoded_batches + weight  # 0 for a batch of which nothing decoded
            if optimizer2 is not None:
                step_batches.append((batch, weight))
            with accelerator.accumulate(model):
                loss, metrics = _split_loss(method.loss(model, batch))
                loss = loss * weight
                for name, value in metrics.items():
                    step_metrics[name] = step_metrics.get(name, zero) + value.detach().float()
                # Backward whatever the loss: whether it was finite is decided once per optimizer step, alike on
                # every rank, so micro-steps carry no host sync and no collective of their own.
                accelerator.backward(loss)
                step_loss, micro_steps = step_loss + loss.detach().float(), micro_steps + 1
                if accelerator.sync_gradients:
                    step_loss = step_loss / micro_steps
                    non_finite = accelerator.reduce((~torch.isfinite(step_loss)).float(), "sum").item() > 0
                    if non_finite:
                        consecutive_bad += 1
                        state["non_finite_steps"].append(global_step + 1)
                        logger.warning("step %d: non-finite loss; update skipped", global_step + 1)
                        if consecutive_bad >= args.max_non_finite_steps:
                            raise TrainingError(
                                f"{consecutive_bad} consecutive steps with a non-finite loss (last: step "
                                f"{global_step + 1}); stopping. Lower the learning rate or use bf16 rather than fp16."
                            )
                    else:
                        consecutive_bad = 0
                        optimizer.step()
                        method.after_optimizer_step(accelerator, model, global_step + 1)
                        log_loss, log_steps = log_loss + step_loss, log_steps + 1
                        for name, value in step_metrics.items():
                            log_metrics[name] = log_metrics.get(name, zero) + value / micro_steps
                    optimizer.zero_grad(set_to_none=True)  # a skipped step's gradients go too
                    if optimizer2 is not None:
                        if not non_finite:
                            second_metrics = _second_step(accelerator, model, method, optimizer2, step_batches)
                            for name, value in second_metrics.items():
                                log_metrics[name] = log_metrics.get(name, zero) + value
                        step_batches = []
                    step_loss, micro_steps, step_metrics = zero, 0, {}
            images_seen += batch["pixel_values"].shape[0] * world
            if not accelerator.sync_gradients:
                continue
            for each in schedulers:
                each.step()
            global_step += 1
            progress.update(1)
            # log_steps is the same on every rank (the skip decision is shared), so all enter the reduce or none
            if (global_step % args.logging_steps == 0 or global_step == max_steps) and log_steps:
                names = sorted(log_metrics)
                means = accelerator.reduce(
                    torch.stack([log_loss] + [log_metrics[n] for n in names]) / log_steps, "mean"
                )
                mean_loss, *metric_values = means.tolist()
                elapsed = time.perf_counter() - start
                logs = {"loss": mean_loss, "lr": scheduler.get_last_lr()[0], "images_per_second": images_seen / elapsed}
                logs.update(zip(names, metric_values, strict=True))
                state["loss_history"].append([global_step, mean_loss])
                if names:
                    state["metrics_history"].append([global_step, dict(zip(names, metric_values, strict=True))])
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                accelerator.log(logs, step=global_step)
                log_loss, log_steps, log_metrics = zero, 0, {}
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                state.update(
                    epoch=epoch,
                    batches_in_epoch=batches_in_epoch,
                    skipped=skips.skipped,
                    layout=layout,
                    run_id=run_id,
                    **identity,
                )
                save_checkpoint(
                    accelerator, args.output_dir, global_step, state, args.checkpoints_total_limit, extra_objects
                )
                if os.environ.get(_EXIT_AFTER_CHECKPOINT) == str(global_step):
                    os._exit(1)
            if global_step >= max_steps:
                done = True
                break
        # a dataset of which nothing decodes would "train" on zero losses and save an untrained model
        if accelerator.reduce(decoded_batches, "sum").item() == 0:
            raise TrainingError(
                f"no image of {description} could be decoded in a whole epoch ({len(skips.skipped)} files skipped "
                f"on this process, for example {next(iter(skips.skipped), 'none')}); nothing was trained"
            )
    progress.close()
    wall = time.perf_counter() - start

    # ---- finish -------------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    all_skipped = {}
    for report in gather_object([skips.skipped]):
        all_skipped.update(report)
    in_sync = _ranks_in_sync(accelerator, model, extra_state)
    state_dict = accelerator.get_state_dict(model)
    summary.update(
        steps=global_step,
        wall_time_seconds=round(wall, 2),
        images_per_second=round(images_seen / wall, 2) if wall > 0 else None,
        final_loss=state["loss_history"][-1][1] if state["loss_history"] else None,
        final_metrics=state["metrics_history"][-1][1] if state["metrics_history"] else {},
        loss_history=state["loss_history"],
        metrics_history=state["metrics_history"],
        non_finite_steps=state["non_finite_steps"],
        skipped_images=all_skipped,
        ranks_in_sync=in_sync,
        resumed_from=str(resume_path) if resume_path else None,
    )
    save_problem = None
    if accelerator.is_main_process:
        save_problem = _save_final(
            accelerator, model, method, args, run_id, summary, state_dict, config, raw, image_column
        )
    # end_training destroys the process group. Without this barrier the other ranks did so while the main process
    # was still saving, and with 2 CPU processes the main one then blocked for good at teardown. The broadcast is
    # that barrier, and tells every process whether the save failed, so that all of them stop alike.
    save_problem = _broadcast(accelerator, save_problem)
    # DDP's reducer must not hold the last reference to the process group: torch frees it from there with the GIL
    # held, while a gloo worker thread, still releasing the barrier's work, waits for the GIL (pytorch#56297). Freed
    # here, the reducer lets go first; destroy_process_group then frees the group with the GIL released. Without this,
    # about 1 in 20 two-process CPU runs hung for good after saving.
    accelerator.free_memory()
    del model, optimizer, optimizer2, loader, scheduler, schedulers
    gc.collect()
    accelerator.end_training()
    if accelerator.is_main_process:
        print(
            f"done: {global_step} steps in {wall:.1f}s ({summary['images_per_second']} images/s), "
            f"final loss {summary['final_loss']}, skipped images {len(all_skipped)}; model in {args.output_dir}"
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


def _broadcast(accelerator, value):
    """`value` of the main process, on every process (and a barrier: every process waits for the main one)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _save_final(accelerator, model, method, args, run_id, summary, state_dict, config, raw, image_column) -> str | None:
    """The final model, pictures and records (main process): written into a staging folder inside the output
    folder, then moved in, the weights first and `training_summary.json` last. Returns None, or why nothing was
    saved (non-finite weights, a full disk): the previous files of the folder are then untouched."""
    from accelerate.utils import DistributedType

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
    # FSDP / ZeRO-3 shard the parameters: a forward on the main process alone would wait for the other ranks
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    staging = folder / f".tmp-final-{run_id}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copy2(folder / "training_args.json", staging / "training_args.json")  # the card reads it
        pictured = _held_out_images(args) or (raw, image_column, args.split)
        summary["reconstruction"] = _save_pictures(unwrapped, *pictured, config, summary, staging, not sharded)
        # the records and pictures first: save_pretrained builds the model card from what the folder holds
        (staging / "training_summary.json").write_text(json.dumps(summary, indent=2))
        unwrapped.save_pretrained(staging, state_dict=state_dict)
        method.save_outputs(unwrapped, str(staging))
        move_into_place(staging, folder)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if is_no_space(err):
            needed = sum(t.numel() * t.element_size() for t in state_dict.values())
            return no_space_message(folder, needed, last)
        return f"could not save the model in {folder}: {_one_line(err)}; {kept}"
    return None


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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _held_out_images(args: PretrainArguments):
    """(dataset, image column, split) of images the run did not train on, for its pictures and reconstruction error:
    the built-in digits' test split; None for other data, whose held-out images hf_mim cannot know."""
    if args.dataset in (None, BUILTIN_DATASET) and args.split == "train":
        return builtin_digits("test"), "image", "test"
    return None


def _save_pictures(model, raw, image_column, split, config, summary, output_dir, draw_model=True) -> dict | None:
    """loss_curve.png from the loss history, and the method's picture (reconstructions, ADIOS masks, tokens) of the
    first images of `raw`, resized and normalised without augmentation. For a pixel-target method, also returns the
    reconstruction error (`reconstruction_error`) on up to 512 of those images. A picture that fails is logged, not
    fatal: the trained weights matter more than their illustration."""
    from ..model_cards.pictures import PIXEL_TARGET_TYPES, reconstruction_error, save_loss_curve, save_method_picture
    from .transforms import MAETransform, open_image

    try:
        if summary["loss_history"]:
            save_loss_curve(summary["loss_history"], Path(output_dir, "loss_curve.png"), summary["method"])
        if not draw_model:
            logger.info("parameters are sharded: no reconstruction or mask picture (draw it from the saved model)")
            return None
        transform = MAETransform(
            config.image_size, config.image_mean, config.image_std, config.num_channels, train=False
        )
        pixel_target = config.model_type in PIXEL_TARGET_TYPES
        wanted = 512 if pixel_target else 8
        images = []
        for index in range(min(len(raw), 4 * wanted)):
            try:
                images.append(transform(open_image(raw[index][image_column]), None))
            except Exception:  # noqa: BLE001  (bad files are skipped in training too)
                continue
            if len(images) == wanted:
                break
        if not images:
            return None
        images = torch.stack(images)
        save_method_picture(model, images[:8], output_dir)
        if pixel_target:
            error = reconstruction_error(model, images)
            return {"split": split, **{k: round(v, 6) if isinstance(v, float) else v for k, v in error.items()}}
    except Exception as err:  # noqa: BLE001
        logger.warning("could not draw the model-card pictures: %s", err)
    return None


def _second_step(accelerator, model, method, optimizer2, step_batches) -> dict[str, torch.Tensor]:
    """The second optimizer's step on the micro-batches the main one just stepped on, against the updated model.

    DDP synchronises gradients on the last micro-batch only; the loss is scaled like the main one (accelerate
    divides by the accumulation steps). Every parameter takes part in these backward passes, the main side's too:
    their gradients are dropped afterwards rather than excluded with requires_grad, which DDP does not allow to
    change after wrapping. A non-finite loss on any rank skips the step on every rank."""
    optimizer2.zero_grad(set_to_none=True)
    total, metrics = None, {}
    for i, (batch, weight) in enumerate(step_batches):
        sync = i == len(step_batches) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss, batch_metrics = _split_loss(method.second_loss(model, batch))
            accelerator.backward(loss * weight)
        total = loss.detach().float() if total is None else total + loss.detach().float()
        for name, value in batch_metrics.items():
            metrics[name] = metrics.get(name, 0) + value.detach().float() / len(step_batches)
    if accelerator.reduce((~torch.isfinite(total)).float(), "sum").item() > 0:
        logger.warning("non-finite loss of the second optimizer; its update skipped")
        metrics = {}
    else:
        optimizer2.step()
    optimizer2.zero_grad(set_to_none=True)
    accelerator.unwrap_model(model).zero_grad(set_to_none=True)  # the main side's gradients from these passes
    return metrics


def _split_loss(output) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return output if isinstance(output, tuple) else (output, {})


def _tensors_of(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state] if state.is_floating_point() else []
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors_of(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors_of(value)]
    return []


def _ranks_in_sync(accelerator, model, extra_state=()) -> bool:
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


def _hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    cpu = platform.processor() or platform.machine()
    return f"{accelerator.num_processes} process(es) on {cpu}, {os.cpu_count()} CPUs"


def _setup_logging(accelerator) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for name in ("hf_mim.pretrain", "hf_mim.training.checkpoints", "hf_mim.training.data"):
        logging.getLogger(name).setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
