"""What a run leaves beside its weights, for `hf-mim pretrain` and `MIMTrainer` alike: the final save (staged, then
moved in, weights first and `training_summary.json` last), the loss curve, the method's picture and the
reconstruction error of held-out images.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import datasets
import torch

from ..data.images import ImageAugmentation
from ..data.pipeline import SamplePipeline
from ..data.sources import BUILTIN_DATASET, builtin_digits, undecoded
from ..errors import one_line
from ..model_cards.pictures import reconstruction_error, save_eval_curve, save_loss_curve, save_method_pictures
from .arguments import PretrainArguments
from .callbacks import TEACHER_FILE, save_teacher
from .checkpoints import list_checkpoints
from .distributed import parameters_are_sharded
from .run_folder import (
    forget_previous_args,
    is_no_space,
    is_write_failure,
    move_into_place,
    no_space_message,
    previous_outputs,
)

logger = logging.getLogger("hf_mim.pretrain")


def save_final(accelerator, model, spec, args, run_id, summary, state_dict, config, raw, image_column) -> str | None:
    """The final model, pictures and records (main process): written into a staging folder inside the output
    folder, then moved in, the weights first and `training_summary.json` last. Returns None, or why nothing was
    saved (non-finite weights, a full disk): the previous files of the folder are then untouched."""

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
        pictured = held_out_images(args) or (raw, image_column, args.split)
        summary["reconstruction"] = save_pictures(drawn, spec, *pictured, config, summary, staging)
        # the records and pictures first: save_pretrained builds the model card from what the folder holds
        (staging / "training_summary.json").write_text(json.dumps(summary, indent=2))
        unwrapped.save_pretrained(staging, state_dict=state_dict)
        if hasattr(unwrapped, "teacher"):
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


def held_out_images(args: PretrainArguments):
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
    try:
        if summary["loss_history"]:
            save_loss_curve(summary["loss_history"], Path(output_dir, "loss_curve.png"), summary["method"])
        if summary.get("eval_history"):
            title = f"{summary['method']}: held-out k-NN probe"
            save_eval_curve(summary["eval_history"], Path(output_dir, "eval_curve.png"), title)
        if not draw_model:
            logger.info("parameters are sharded: no reconstruction or mask picture (draw it from the saved model)")
            return None
        pipeline = SamplePipeline(image_column, ImageAugmentation.from_config(config), seed=None, decode_lazily=False)
        pixel_target = spec.picture is not None and spec.picture.kind == "reconstruction"
        wanted = 512 if pixel_target else 8
        # undecoded, so that a bad file is skipped here (as in training) instead of ending the iteration
        rows = raw.decode(False) if isinstance(raw, datasets.IterableDataset) else undecoded(raw)
        images, _ = pipeline.first_decoded((row[image_column] for row in itertools.islice(rows, 4 * wanted)), wanted)
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
