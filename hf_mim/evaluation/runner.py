"""`hf-mim evaluate`: run the protocols on one or more checkpoints, print a table, write the results.

Writes, under OUTPUT_DIR: `evaluation.json` (every row, the arguments, the machine), `cka.json` and `cka.png` for
the CKA protocol, and the fine-tuning runs' Trainer folders. Each local model folder gets its own results merged
into its `eval_results.json` (a result replaces an earlier one of the same protocol, settings, dataset, split and
metric), which `hf-mim push` turns into the model card's `model-index`; a CKA plot is copied in as
`occlusion_cka.png`. Hub checkpoints are never written to: their results stay in OUTPUT_DIR.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import AutoConfig

from ..data.images import ImageAugmentation
from ..data.labelled import labels_per_class_subset, load_labelled_splits
from ..data.pipeline import KeepShapeCollator, LabelledTransform, prepare_labelled
from ..files import write_atomic
from ..model_cards.card import EVAL_RESULTS
from ..training.arguments import setup_logging
from ..training.distributed import fresh_accelerate_state, hardware_description, needs_cpu_process_group
from .cka import DEFAULT_RATIOS, OCCLUSIONS, cka_table, occlusion_features, plot_cka
from .finetune import finetune
from .protocols import (
    KNN_K,
    KNN_TEMPERATURE,
    check_block,
    extract_features,
    knn_scores,
    linear_probe,
    load_encoder,
    load_metric,
)
from .recipes import DOWNSTREAM_RECIPES, RECIPES, choose_recipe

logger = logging.getLogger("hf_mim.evaluate")

PROTOCOLS = ("knn", "linear", "finetune", "cka")
RANDOM_INIT = "random-init"


def _help(text: str, **metadata) -> dict:
    return {"help": text, **metadata}


@dataclass
class EvaluateArguments:
    """What `hf-mim evaluate` takes; the CLI is generated from these fields, their defaults and their help."""

    model: list[str] = field(metadata=_help("checkpoint folders or Hub ids", metavar="PATH_OR_REPO"))
    protocol: list[str] = field(
        default_factory=lambda: ["knn"], metadata=_help("protocols to run (default: knn)", choices=PROTOCOLS)
    )
    random_init: bool = field(
        default=False, metadata=_help("also evaluate the first model's architecture freshly initialised (the baseline)")
    )
    dataset: str | None = field(
        default=None, metadata=_help("Hub dataset id, image folder, saved dataset, or 'digits' (built in, the default)")
    )
    dataset_config: str | None = field(default=None, metadata=_help("dataset configuration name (Hub datasets)"))
    train_split: str = field(
        default="train", metadata=_help("split the k-NN bank, probe and fine-tuning learn from (default: train)")
    )
    test_split: str | None = field(
        default=None,
        metadata=_help("split to report on (default: test or validation, else a held-out part of the train split)"),
    )
    test_size: float = field(
        default=0.2, metadata=_help("held-out fraction when there is no test split (default: %(default)s)")
    )
    image_column: str | None = field(default=None, metadata=_help("column holding the images (default: detected)"))
    label_column: str | None = field(
        default=None, metadata=_help("column holding the labels (default: the first ClassLabel, else 'label' ...)")
    )
    labels_per_class: int | None = field(
        default=None, metadata=_help("low-label setting: train on N images of each class (seeded)")
    )
    batch_size: int = field(
        default=128, metadata=_help("images per process for feature extraction (default: %(default)s)")
    )
    num_workers: int = field(default=0, metadata=_help("DataLoader workers per process (default: %(default)s)"))
    mixed_precision: str = field(
        default="no", metadata=_help("autocast precision (default: %(default)s)", choices=["no", "fp16", "bf16"])
    )
    pooling: str | None = field(
        default=None,
        metadata=_help(
            "feature pooling: CLS token or mean of patches (default: k-NN and linear probe the recipe's, mean for "
            "small; otherwise and fine-tuning the config's)",
            choices=["cls", "mean"],
        ),
    )
    block: int | None = field(
        default=None, metadata=_help("k-NN / linear: features of this block, 1-based (default: the last)")
    )
    knn_k: int = field(default=KNN_K, metadata=_help("neighbours (default: %(default)s)"))
    knn_temperature: float = field(default=KNN_TEMPERATURE, metadata=_help("vote temperature (default: %(default)s)"))
    linear_epochs: int = field(default=100, metadata=_help("linear probe epochs (default: %(default)s)"))
    linear_batch_size: int = field(default=256, metadata=_help("linear probe batch size (default: %(default)s)"))
    linear_lr: float = field(default=0.1, metadata=_help("linear probe base lr per 256 (SGD; default: %(default)s)"))
    recipe: str = field(
        default="auto",
        metadata=_help(
            "downstream recipe for every setting left unset: small (for images of at most 64 px: a crop keeping "
            f"80-100%% of the image, lr 2.5e-3 per 256, about {RECIPES['small'].target_steps:,} steps sized by the "
            f"labelled images, {RECIPES['small'].min_epochs} to {RECIPES['small'].max_epochs} epochs; k-NN and "
            "linear probe on the mean of the patch tokens), paper (MAE's ImageNet fine-tuning: 50 "
            "epochs, crop 8-100%%, lr 1e-3; the config's pooling), or auto: small when the model's image size is at "
            "most 64 px, as hf-mim pretrain picks its recipe (default: %(default)s)",
            choices=DOWNSTREAM_RECIPES,
        ),
    )
    finetune_epochs: float | None = field(
        default=None,
        metadata=_help(
            f"fine-tuning epochs (default: the recipe's; small: ~{RECIPES['small'].target_steps:,} steps, "
            f"{RECIPES['small'].min_epochs} to {RECIPES['small'].max_epochs} epochs)"
        ),
    )
    finetune_batch_size: int = field(
        default=64, metadata=_help("fine-tuning batch size per process (default: %(default)s)")
    )
    finetune_lr: float | None = field(
        default=None,
        metadata=_help("fine-tuning base lr per 256 (AdamW; default: the recipe's: small 2.5e-3, paper 1e-3)"),
    )
    weight_decay: float | None = field(
        default=None, metadata=_help("fine-tuning weight decay (default: the recipe's, 0.05)")
    )
    layer_decay: float | None = field(
        default=None, metadata=_help("layer-wise lr decay, e.g. 0.75 as MAE (default: the recipe's, 1: off)")
    )
    drop_path: float | None = field(
        default=None, metadata=_help("fine-tuning stochastic depth rate (default: the config's)")
    )
    label_smoothing: float | None = field(
        default=None, metadata=_help("fine-tuning label smoothing (default: the recipe's, 0.1)")
    )
    crop_scale: list[float] | None = field(
        default=None,
        metadata=_help(
            "fine-tuning random resized crop area range, MIN MAX (default: the recipe's: small 0.8 1, "
            "paper 0.08 1 as MAE)"
        ),
    )
    mask_ratios: list[float] = field(
        default_factory=lambda: list(DEFAULT_RATIOS), metadata=_help("cka: mask ratios (default: 0.1 ... 0.9)")
    )
    occlusion: str = field(
        default="drop", metadata=_help("cka: drop masked patches (MAE) or zero them", choices=OCCLUSIONS)
    )
    cka_samples: int = field(default=1024, metadata=_help("cka: test images used (default: %(default)s)"))
    output_dir: str = field(
        default="outputs/evaluate", metadata=_help("tables, plots, fine-tuning runs (default: %(default)s)")
    )
    save_to_model: bool = field(
        default=True,
        metadata=_help("merge results into the local model folders' eval_results.json (--no-save-to-model: do not)"),
    )
    seed: int = field(default=0, metadata=_help("seed for splits, subsets, masks, probes (default: %(default)s)"))


def validate(args: EvaluateArguments) -> None:
    def bad(flag, value, allowed):
        raise ValueError(f"--{flag} {value!r} is invalid; allowed: {allowed}")

    if not args.model:
        bad("model", args.model, "one or more checkpoint folders or Hub ids")
    for name in args.protocol:
        if name not in PROTOCOLS:
            bad("protocol", name, f"any of {PROTOCOLS}")
    if args.pooling not in (None, "cls", "mean"):
        bad("pooling", args.pooling, "cls or mean")
    if args.block is not None and args.block < 1:
        bad("block", args.block, "a block number from 1 (the first block) to the encoder's depth")
    if args.labels_per_class is not None and args.labels_per_class < 1:
        bad("labels-per-class", args.labels_per_class, "a positive integer")
    for flag in ("batch_size", "knn_k", "linear_epochs", "linear_batch_size", "finetune_batch_size", "cka_samples"):
        if getattr(args, flag) < 1:
            bad(flag.replace("_", "-"), getattr(args, flag), "a positive integer")
    if args.recipe not in DOWNSTREAM_RECIPES:
        bad("recipe", args.recipe, DOWNSTREAM_RECIPES)
    if args.finetune_epochs is not None and not args.finetune_epochs > 0:
        bad("finetune-epochs", args.finetune_epochs, "a positive number")
    if not 0.0 < args.test_size < 1.0:
        bad("test-size", args.test_size, "a fraction strictly between 0 and 1")
    if args.layer_decay is not None and not 0.0 < args.layer_decay <= 1.0:
        bad("layer-decay", args.layer_decay, "a number in (0, 1]; 1 turns it off")
    if not args.knn_temperature > 0:
        bad("knn-temperature", args.knn_temperature, "a positive number")
    if args.crop_scale is not None and (
        len(args.crop_scale) != 2 or not 0.0 < args.crop_scale[0] <= args.crop_scale[1] <= 1.0
    ):
        bad("crop-scale", args.crop_scale, "MIN MAX with 0 < MIN <= MAX <= 1")
    if args.occlusion not in OCCLUSIONS:
        bad("occlusion", args.occlusion, OCCLUSIONS)
    if not args.mask_ratios or any(not 0.0 < r < 1.0 for r in args.mask_ratios):
        bad("mask-ratios", args.mask_ratios, "ratios strictly between 0 and 1")
    if args.mixed_precision not in ("no", "fp16", "bf16"):
        bad("mixed-precision", args.mixed_precision, "no, fp16 or bf16")
    if args.drop_path is not None and not 0.0 <= args.drop_path < 1.0:
        bad("drop-path", args.drop_path, "a probability in [0, 1)")
    if args.label_smoothing is not None and not 0.0 <= args.label_smoothing < 1.0:
        bad("label-smoothing", args.label_smoothing, "a number in [0, 1); 0 turns it off")
    for flag in ("linear_lr", "finetune_lr"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            bad(flag.replace("_", "-"), value, "a positive, finite number")
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        bad("weight-decay", args.weight_decay, "a finite number, 0 or more")


def _settings(args: EvaluateArguments, protocol: str, pooling: str) -> str:
    # the seed draws the held-out split, the label subset and the probe: another seed is another figure
    low = f", {args.labels_per_class} labels/class" if args.labels_per_class else ""
    low += f", seed {args.seed}" if args.seed else ""
    where = f"block {args.block}, " if args.block else ""
    if protocol == "knn":
        return f"k={args.knn_k}, T={args.knn_temperature:g}, {where}{pooling}{low}"
    # every setting that changes the figure is in the key, so that a result replaces only one of the same recipe
    if protocol == "linear":
        return (
            f"{where}{pooling}, {args.linear_epochs} epochs, lr {args.linear_lr:g}, batch {args.linear_batch_size}{low}"
        )
    layer_decay = f", layer decay {args.layer_decay:g}" if args.layer_decay < 1 else ""
    crop = "" if list(args.crop_scale) == [0.08, 1.0] else f", crop {args.crop_scale[0]:g}-{args.crop_scale[1]:g}"
    drop_path = f", drop path {args.drop_path:g}" if args.drop_path is not None else ""
    pool = f", {args.pooling}" if args.pooling else ""
    return (
        f"{args.finetune_epochs:g} epochs, lr {args.finetune_lr:g}, batch {args.finetune_batch_size}, weight decay "
        f"{args.weight_decay:g}, label smoothing {args.label_smoothing:g}{layer_decay}{drop_path}{crop}{pool}{low}"
    )


def finetune_settings(
    args: EvaluateArguments, model_name: str, num_images: int, processes: int = 1
) -> tuple[EvaluateArguments, str]:
    """(`args` with every fine-tuning setting the user left unset taken from the downstream recipe that `--recipe`
    picks for this model (by its image size), a description of that choice: which recipe, why, and which settings
    the user gave), the description logged."""
    config = AutoConfig.from_pretrained(model_name, trust_remote_code=False)
    recipe, why = choose_recipe(args.recipe, config.image_size)
    chosen = {
        "finetune_lr": recipe.finetune_lr,
        "weight_decay": recipe.weight_decay,
        "layer_decay": recipe.layer_decay,
        "drop_path": recipe.drop_path,
        "label_smoothing": recipe.label_smoothing,
        "crop_scale": list(recipe.crop_scale),
        "finetune_epochs": recipe.epochs_for(num_images, args.finetune_batch_size, processes),
    }
    unset = {k: v for k, v in chosen.items() if getattr(args, k) is None}
    tuned = replace(args, **unset)
    given = sorted(set(chosen) - set(unset))
    described = f"{recipe.name} ({why})" + (f"; given: {', '.join(given)}" if given else "")
    logger.info(
        "fine-tuning recipe %s: %g epochs over %d images, lr %g, crop %g-%g, label smoothing %g, layer decay %g",
        described,
        tuned.finetune_epochs,
        num_images,
        tuned.finetune_lr,
        *tuned.crop_scale,
        tuned.label_smoothing,
        tuned.layer_decay,
    )
    return tuned, described


def _dataset_key(splits, args: EvaluateArguments) -> str:
    if splits.dataset_id:
        return splits.dataset_id
    name = args.dataset or "digits"
    return Path(name).name or name


def _accelerator(args: EvaluateArguments):
    fresh_accelerate_state()
    return Accelerator(cpu=needs_cpu_process_group(), mixed_precision=args.mixed_precision)


def _loader(dataset, splits, config, args, accelerator):
    transform = ImageAugmentation.from_config(config)
    prepared = prepare_labelled(dataset, LabelledTransform(splits.image_column, splits.label_column, transform))
    size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    loader = DataLoader(
        prepared,
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.num_workers,
        collate_fn=KeepShapeCollator((config.num_channels, *size)),
    )
    return accelerator.prepare_data_loader(loader)


def _name(model: str, random_init: bool) -> str:
    return f"{RANDOM_INIT} ({Path(model).name or model})" if random_init else model


def evaluate_models(args: EvaluateArguments) -> dict:
    """Run every protocol on every model; returns {"results": rows, "cka": {...}} (also in evaluation.json)."""
    validate(args)
    if args.save_to_model:
        for model_name in args.model:
            if Path(model_name).is_dir():
                existing_results(Path(model_name))
    datasets.disable_progress_bars()  # one "Flattening the indices" bar per split and model otherwise
    accelerator = _accelerator(args)
    main = accelerator.is_main_process

    setup_logging(main)
    splits = load_labelled_splits(
        args.dataset,
        args.dataset_config,
        args.train_split,
        args.test_split,
        args.image_column,
        args.label_column,
        args.test_size,
        args.seed,
    )
    train = splits.train
    if args.labels_per_class:
        train = labels_per_class_subset(train, splits.label_column, args.labels_per_class, args.seed)
    logger.info(
        "%s: %d training images (%s), %d test images (%s), %d classes",
        splits.description,
        len(train),
        f"{args.labels_per_class} per class" if args.labels_per_class else args.train_split,
        len(splits.test),
        splits.test_split,
        splits.num_classes,
    )
    metric = load_metric("accuracy")
    output_dir = Path(args.output_dir)
    dataset_key = _dataset_key(splits, args)
    entries = [(m, False) for m in args.model] + ([(args.model[0], True)] if args.random_init else [])
    rows: list[dict] = []
    recipes: dict[str, str] = {}  # model -> the fine-tuning recipe it got, and why
    cka_results: dict[str, torch.Tensor] = {}
    skipped = 0
    for model_name, random_init in entries:
        name = _name(model_name, random_init)
        feature_protocols = [p for p in args.protocol if p in ("knn", "linear", "cka")]
        if feature_protocols:
            model = load_encoder(model_name, random_init=random_init, seed=args.seed)
            check_block(model.config, args.block)
            recipe, _ = choose_recipe(args.recipe, model.config.image_size)
            pooling = args.pooling or recipe.probe_pooling or model.config.pooling
            # no DDP wrapper: nothing is trained, each process only encodes its shard
            encoder = model.to(accelerator.device)
            if "knn" in args.protocol or "linear" in args.protocol:
                train_loader = _loader(train, splits, encoder.config, args, accelerator)
                test_loader = _loader(splits.test, splits, encoder.config, args, accelerator)
                train_x, train_y, bad_train = extract_features(encoder, train_loader, accelerator, args.block, pooling)
                test_x, test_y, bad_test = extract_features(encoder, test_loader, accelerator, args.block, pooling)
                skipped = max(skipped, bad_train + bad_test)
                for protocol in ("knn", "linear"):
                    if protocol not in args.protocol:
                        continue
                    if protocol == "knn":
                        scores = knn_scores(
                            train_x, train_y, test_x, splits.num_classes, args.knn_k, args.knn_temperature
                        )
                    else:
                        _, scores = linear_probe(
                            train_x,
                            train_y,
                            test_x,
                            splits.num_classes,
                            epochs=args.linear_epochs,
                            batch_size=args.linear_batch_size,
                            base_lr=args.linear_lr,
                            seed=args.seed,
                        )
                    value = metric.compute(predictions=scores.argmax(-1), references=test_y)["accuracy"]
                    rows.append(
                        _row(name, model_name, random_init, protocol, args, pooling, splits, dataset_key, value)
                    )
            if "cka" in args.protocol:
                cka_results[name] = _occlusion_cka(encoder, splits, args, accelerator, pooling)
            del model, encoder
            gc.collect()
        if "finetune" in args.protocol:
            tuned, described = finetune_settings(args, model_name, len(train), accelerator.num_processes)
            recipes.setdefault(name, described)
            set_seed(args.seed)
            run_dir = output_dir / "finetune" / (RANDOM_INIT if random_init else (Path(model_name).name or "model"))
            metrics = finetune(
                model_name,
                splits,
                run_dir,
                random_init=random_init,
                labels_per_class=args.labels_per_class,
                epochs=tuned.finetune_epochs,
                batch_size=args.finetune_batch_size,
                base_lr=tuned.finetune_lr,
                weight_decay=tuned.weight_decay,
                layer_decay=tuned.layer_decay,
                drop_path_rate=tuned.drop_path,
                label_smoothing=tuned.label_smoothing,
                crop_scale=tuple(tuned.crop_scale),
                pooling=args.pooling,
                seed=args.seed,
                num_workers=args.num_workers,
                mixed_precision=args.mixed_precision,
            )
            accuracy = metrics["eval_accuracy"]
            rows.append(_row(name, model_name, random_init, "finetune", tuned, None, splits, dataset_key, accuracy))

    summary = {
        "results": rows,
        "cka": {
            "mask_ratios": list(args.mask_ratios),
            "occlusion": args.occlusion,
            "tables": {name: table.tolist() for name, table in cka_results.items()},
        }
        if cka_results
        else None,
        "finetune_recipes": recipes or None,
        "skipped_images": skipped,
        "dataset": splits.description,
        "test_split": splits.test_split,
        "arguments": asdict(args),
        "hardware": hardware_description(accelerator),
    }
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "evaluation.json").write_text(json.dumps(summary, indent=2))
        print(format_table(rows))
        if cka_results:
            (output_dir / "cka.json").write_text(json.dumps(summary["cka"], indent=2))
            plot_cka(cka_results, args.mask_ratios, output_dir / "cka.png", f"occlusion invariance ({args.occlusion})")
            print(format_cka_table(cka_results, args.mask_ratios))
        if args.save_to_model:
            _save_to_models(rows, entries, output_dir if cka_results else None)
    accelerator.wait_for_everyone()
    return summary


def _row(name, model_name, random_init, protocol, args, pooling, splits, dataset_key, value) -> dict:
    return {
        "model": name,
        "protocol": protocol,
        "settings": _settings(args, protocol, pooling),
        "dataset": dataset_key,
        "dataset_name": splits.description,
        "split": splits.test_split,
        "metric": "accuracy",
        "value": round(float(value), 6),
        "source": None if random_init else model_name,
    }


@torch.no_grad()
def _occlusion_cka(encoder, splits, args, accelerator, pooling: str) -> torch.Tensor:
    """(R, depth) CKA table of one encoder over the first `cka_samples` test images."""
    test = splits.test.select(range(min(args.cka_samples, len(splits.test))))
    loader = _loader(test, splits, encoder.config, args, accelerator)
    full, occluded = [], []
    for batch in loader:
        # each image's masks are seeded by its index in the dataset: the same on any number of processes
        f, o = occlusion_features(
            encoder, batch["pixel_values"], batch["index"], args.mask_ratios, args.occlusion, pooling, args.seed
        )
        f, o, valid = accelerator.gather_for_metrics(
            (f.permute(2, 0, 1, 3).contiguous(), o.permute(2, 0, 1, 3).contiguous(), batch["valid"])
        )
        full.append(f[valid.bool()].cpu())
        occluded.append(o[valid.bool()].cpu())
    full = torch.cat(full).permute(1, 2, 0, 3)  # (depth, R, N, D)
    occluded = torch.cat(occluded).permute(1, 2, 0, 3)
    return cka_table(full, occluded)


def existing_results(folder: Path) -> list[dict]:
    """The results an earlier evaluation merged into `folder`'s eval_results.json (none when there is no file); a
    ValueError naming the file when it is not the `{"results": [...]}` hf_mim writes. Checked before anything is
    evaluated, not after."""
    path = folder / EVAL_RESULTS
    if not path.exists():
        return []
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix or remove it, or pass --no-save-to-model") from None
    results = content.get("results") if isinstance(content, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ValueError(
            f'{path} holds a JSON {type(content).__name__}, not {{"results": [...]}} as hf_mim writes it; fix or '
            "remove it, or pass --no-save-to-model"
        )
    return results


def _save_to_models(rows: list[dict], entries, cka_dir: Path | None) -> None:
    for model_name, random_init in entries:
        folder = Path(model_name)
        if random_init or not folder.is_dir():
            continue
        path = folder / EVAL_RESULTS
        existing = existing_results(folder)
        mine = [{k: v for k, v in r.items() if k not in ("model", "source")} for r in rows if r["source"] == model_name]
        keys = {_result_key(r) for r in mine}
        merged = [r for r in existing if _result_key(r) not in keys] + mine
        write_atomic(path, json.dumps({"results": merged}, indent=2))
        if cka_dir is not None:
            shutil.copyfile(cka_dir / "cka.png", folder / "occlusion_cka.png")
        logger.info("results written to %s", path)


def _result_key(r: dict) -> tuple:
    return (r.get("protocol"), r.get("settings"), r.get("dataset"), r.get("split"), r.get("metric"))


def format_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    header = ("model", "protocol", "settings", "dataset", "split", "accuracy")
    lines = [
        (r["model"], r["protocol"], r["settings"], r["dataset"], r["split"], f"{100 * r['value']:.2f}") for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    fmt = " | ".join(f"{{:{w}}}" for w in widths)
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule] + [fmt.format(*line) for line in lines])


def format_cka_table(results: dict[str, torch.Tensor], ratios) -> str:
    header = ["model (last block CKA)"] + [f"{r:g}" for r in ratios]
    lines = [[name] + [f"{v:.3f}" for v in table[:, -1].tolist()] for name, table in results.items()]
    widths = [max(len(x) for x in column) for column in zip(header, *lines, strict=True)]
    fmt = " | ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), "-+-".join("-" * w for w in widths)] + [fmt.format(*line) for line in lines])


__all__ = ["EvaluateArguments", "PROTOCOLS", "evaluate_models", "format_table", "validate"]
