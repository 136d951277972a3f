"""`hf-mim pretrain`: the run, start to end, on Accelerate.

One process, multi-process DDP (`accelerate launch`), FSDP or DeepSpeed through the user's accelerate config.
`pretrain` reads top to bottom like accelerate's `complete_cv_example.py`: validate the flags, claim the output
folder, load the data, plan the run (`plan.plan_run`), build the model, prepare, resume, train (`loop.TrainingLoop`),
save (`records.save_final`), tear the process group down (`distributed.end_training`), push. It names no method: what
a method needs comes from its `MethodSpec`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from safetensors import SafetensorError

from ..data.pipeline import Collator, SamplePipeline, prepare_dataset
from ..data.sources import load_pretraining_dataset
from ..data.streaming import check_every_node_has_data, streaming_loader
from ..errors import RunFolderError, TrainingError, one_line
from ..files import write_atomic
from ..hub import push_folder
from ..modeling.auto import method_spec
from ..modeling.backbone import to_2tuple
from ..warm_start import load_initial_weights
from .arguments import PretrainArguments, setup_logging, validate
from .checkpoints import (
    list_checkpoints,
    load_extra_state,
    load_trainer_state,
    resolve_resume,
    save_checkpoint,
    verify_loadable,
)
from .distributed import (
    broadcast_from_main,
    check_distributed_setup,
    end_training,
    fresh_accelerate_state,
    hardware_description,
    needs_cpu_process_group,
    parameters_are_sharded,
    ranks_in_sync,
)
from .loop import TrainingLoop
from .monitor import BestWeights, LearningMonitor
from .optim import adamw, cosine_with_warmup, method_param_groups
from .plan import RunPlan, format_plan, plan_run
from .records import save_final
from .run_folder import (
    RunLock,
    check_not_in_dataset,
    check_output_dir,
    new_run_id,
    previous_run_id,
    restore_previous_args,
    set_aside_previous_args,
)

logger = logging.getLogger("hf_mim.pretrain")


def pretrain(args: PretrainArguments) -> dict:
    """Run pretraining; returns the summary also written to OUTPUT_DIR/training_summary.json."""
    validate(args)  # the flags, before anything is loaded or written
    spec = method_spec(args.method)
    check_distributed_setup(spec)  # before accelerate builds (or silently replaces) the engine it was asked for
    accelerator = _accelerator(args)
    run_id, lock = _claim_output_dir(accelerator, args)
    saved = set_aside = False
    try:
        set_seed(args.seed)

        # ---- data and plan: every default decided once, from the data and the starting checkpoint ---------------
        raw, description = load_pretraining_dataset(
            args.dataset, args.dataset_config, args.split, streaming=args.streaming
        )
        plan = plan_run(args, spec, raw, description, accelerator.num_processes)
        args, config = plan.args, plan.config
        check_distributed_setup(spec, config)
        pipeline, loader, stream = _data(plan, accelerator)
        monitor = _monitor(plan, accelerator)  # the eval dataset is read now: a bad one ends the run before step 1
        if args.early_stopping_patience and parameters_are_sharded(accelerator):
            raise ValueError(
                f"--early-stopping-patience={args.early_stopping_patience} is invalid under FSDP or DeepSpeed: the "
                "best evaluation's weights are kept whole on every process; leave it out there"
            )

        # ---- model, optimizers, schedules ----------------------------------------------------------------------
        model = spec.pretraining_class(config)
        init_report = load_initial_weights(model, plan.checkpoint) if plan.checkpoint else []
        plan = replace(plan, checkpoint=None)  # its copy of the weights
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
        optimizer, adversary_optimizer = _optimizers(model, plan)
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
        plan = plan.with_length(None if stream else len(loader))
        if monitor is not None:
            plan = replace(plan, evaluation=monitor.describe())
        best = BestWeights() if args.early_stopping_patience else None
        schedulers = [
            cosine_with_warmup(o, plan.warmup_steps, plan.max_steps) for o in (optimizer, adversary_optimizer) if o
        ]
        # an EMA teacher lives outside the module tree: built from the prepared student's weights, on its device
        unwrapped = accelerator.unwrap_model(model)
        extra_state = [unwrapped.teacher] if hasattr(unwrapped, "teacher") else []
        # schedulers and the EMA teacher are checkpointed as JSON and safetensors by checkpoints.py, not registered
        # with accelerate, which would pickle them and unpickle them on resume with weights_only=False
        extra_objects = [*schedulers, *extra_state, *([best] if best is not None else [])]

        # ---- resume: the same run, from its newest (or the given) checkpoint -----------------------------------
        layout = {
            "num_processes": plan.num_processes,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "seed": args.seed,
        }
        if stream:  # where each worker's stream stands depends on these too
            layout.update(streaming_workers=stream.workers, shuffle_buffer=args.shuffle_buffer)
        if best is not None:  # its checkpoints hold the best weights besides the state
            layout.update(early_stopping=True)
        # what the checkpoint must have been written by: the same method and model config
        identity = {"method": args.method, "config": _config_fields(config)}
        state, resume_path, run_id = _resume(accelerator, args, run_id, layout, identity, extra_objects)
        if stream is not None:
            if resume_path is not None:
                positions = state["stream_positions"][accelerator.process_index]
                stream.resume_from(positions, state["step"] * args.grad_accum)
            check_every_node_has_data(stream, accelerator)

        if accelerator.is_main_process:
            print(format_plan(plan.describe(model, init_report)), flush=True)
        summary = {**plan.summary(model, init_report), "hardware": hardware_description(accelerator)}
        if monitor is not None:
            summary["eval_dataset"] = monitor.dataset
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
            plan.max_steps,
            description,
            stream=stream,
            monitor=monitor,
            eval_steps=plan.eval_steps,
            best=best,
        )
        checkpoint = partial(
            _checkpoint, accelerator, args, state, dict(layout=layout, run_id=run_id, **identity), extra_objects
        )
        wall = loop.run(loader, pipeline, plan.epochs, checkpoint)

        # ---- finish: the final model, pictures and records, then the hub -------------------------------------------
        summary.update(loop.summary(wall, resume_path))
        if best is not None and best.weights is not None:
            # the saved model is the best evaluation's, on every process (the ranks' check below compares them)
            unwrapped.load_state_dict(best.weights)
            summary["saved_weights"] = f"step {best.step}'s, the best held-out k-NN accuracy ({best.knn_accuracy}%)"
            logger.info("the saved model is %s", summary["saved_weights"])
        in_sync = ranks_in_sync(accelerator, model, extra_state)
        summary["ranks_in_sync"] = in_sync
        state_dict = accelerator.get_state_dict(model)
        save_problem = None
        if accelerator.is_main_process:
            save_problem = save_final(
                accelerator, model, spec, args, run_id, summary, state_dict, config, raw, plan.image_column
            )
        # end_training destroys the process group. Without this barrier the other ranks did so while the main
        # process was still saving, and with 2 CPU processes the main one then blocked for good at teardown. The
        # broadcast is that barrier, and tells every process whether the save failed, so that all stop alike.
        save_problem = broadcast_from_main(accelerator, save_problem)
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
            commit = push_folder(args.output_dir, args.push_to_hub)
            print(f"pushed to {commit.commit_url}")
        return summary
    finally:
        if lock is not None:
            if set_aside and not saved:
                _keep_previous_run(Path(args.output_dir), run_id)
            lock.release()


def _keep_previous_run(folder: Path, run_id: str | None) -> None:
    """After a run that saved no model: the folder goes back to the earlier run whose model it still holds (its
    `training_args.json` restored), unless this run wrote checkpoints, which a resume must be able to find."""
    if run_id is not None and list_checkpoints(folder, run_id):
        logger.info("%s keeps this run's training_args.json: its checkpoints can be resumed", folder)
        return
    restore_previous_args(folder)


def _accelerator(args: PretrainArguments):
    """The run's `Accelerator`: a CPU (gloo) process group when launched on several processes without GPUs, a
    seedable sampler so the data order follows --seed, and trackers when asked for."""
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


def _data(plan: RunPlan, accelerator):
    """(pipeline, loader, stream): each sample decoded, cropped with the method's crop scale and given the
    method's per-sample inputs, all from the sample's own generator (seed, epoch, index). `stream` is the
    `StreamingImages` under --streaming, else None."""
    args, config = plan.args, plan.config
    # uint8 crops from the workers, normalised on the device (TrainingLoop): float32 would be 4x the bytes through
    # the workers' shared memory, which cost more per image than the crop (benchmarks/RESULTS.md, issue #20)
    pipeline = SamplePipeline.for_config(config, plan.image_column, args.seed, spec=plan.spec, normalize=False)
    pipeline.augment.jpeg_draft = args.jpeg_draft
    collator = Collator((config.num_channels, *to_2tuple(config.image_size)), dtype=torch.uint8)
    if args.streaming:
        stream, loader = streaming_loader(args, plan.dataset, plan.image_column, pipeline, collator, accelerator)
        return pipeline, loader, stream
    dataset = prepare_dataset(plan.dataset, plan.image_column, pipeline)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=len(dataset) >= args.batch_size * accelerator.num_processes,
        num_workers=args.num_workers,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed),
    )
    return pipeline, loader, None


def _monitor(plan: RunPlan, accelerator) -> LearningMonitor | None:
    """--eval-dataset's probe (`monitor.LearningMonitor`), else None."""
    args = plan.args
    if args.eval_dataset is None:
        return None
    pixel_target = any(picture.kind == "reconstruction" for picture in plan.spec.pictures(plan.config))
    return LearningMonitor.load(
        args.eval_dataset,
        plan.config,
        pixel_target,
        accelerator,
        args.batch_size,
        args.eval_max_images,
        args.seed,
        args.num_workers,
    )


def _optimizers(model, plan: RunPlan):
    """(AdamW of the model, AdamW of the method's adversary or None). The adversary's parameters (ADIOS's
    occlusion model) are left to its own optimizer; it is prepared with the rest, so accelerate checkpoints it."""
    spec = plan.spec
    groups, adversary_groups, adversary_lr = method_param_groups(model, spec, plan.config, plan.args.weight_decay)
    optimizer = adamw(groups, lr=plan.learning_rate, betas=spec.betas)
    if adversary_lr is None:
        return optimizer, None
    return optimizer, adamw(adversary_groups, lr=adversary_lr, betas=spec.betas)


def _resume(accelerator, args: PretrainArguments, run_id, layout: dict, identity: dict, extra_objects: list):
    """(state, checkpoint resumed from or None, run id): the loop's state, fresh or restored with the model,
    optimizers, schedulers and EMA teacher from a checkpoint this run wrote."""
    state = {
        "epoch": 0,
        "batches_in_epoch": 0,
        "step": 0,
        "loss_history": [],
        "metrics_history": [],
        "eval_history": [],
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


def _claim_output_dir(accelerator, args: PretrainArguments):
    """(run id, lock): the main process checks that the output folder may be written and takes its lock; every
    process learns the outcome, so a refusal stops all of them at once instead of leaving some waiting."""
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
