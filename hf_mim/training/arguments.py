"""`hf-mim pretrain`'s arguments: the dataclass the CLI is generated from (each field's default and help live
here only), the defaults that depend on the data and the recipe, and their validation."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data.sources import BUILTIN_DATASET
from ..errors import one_line
from ..modeling.auto import METHOD_SPECS, method_spec
from ..modeling.masking import MASK_STRATEGIES, MaskedMIMConfig
from ..names import check_repo_id
from .presets import (
    ENCODER_PRESETS,
    RECIPES,
    SMALL_DATASET_IMAGES,
    SMALL_IMAGE_SIZE,
    SMALL_RECIPE_DEEP_MAX_BASE_LR,
    SMALL_RECIPE_DEPTH,
    SMALL_RECIPE_IMAGES,
    build_config_fields,
)

# The image size follows the images (`image_size_from_data`): their own size where a grid of 4 px patches at least
# 7x7 fits it (28 px, Fashion-MNIST's, and up), upsampled to 32 px below (the built-in 8x8 digits), and never more than
# 224 px unasked (ViT-B/16's size; a 1,024 px photo would cost 21x the compute a step).
MIN_NATIVE_IMAGE_SIZE = 28
UPSAMPLED_IMAGE_SIZE = 32
MAX_AUTO_IMAGE_SIZE = 224
DEFAULT_IMAGE_SIZE = 224  # when no image could be sampled
MIN_GRID = 7


class RegisteredMethods:
    """The `--method` choices: the registry's names, read when the parser is built or a value is checked, so a
    method registered after this module was imported is one too."""

    def __iter__(self):
        return iter(METHOD_SPECS)

    def __contains__(self, name) -> bool:
        return name in METHOD_SPECS


def _help(text: str, **metadata) -> dict:
    return {"help": text, **metadata}


def _mask_strategy_help() -> str:
    """--mask-strategy's help, from the masking table and the strategies a method's model adds (MAE's learned)."""
    own = [
        f"{name} also {', '.join(spec.config_class.model_mask_strategies)}"
        for name, spec in METHOD_SPECS.items()
        if issubclass(spec.config_class, MaskedMIMConfig) and spec.config_class.model_mask_strategies
    ]
    strategies = "; ".join([", ".join(MASK_STRATEGIES), *own])
    return f"the config's mask_strategy, for a method that masks patches: {strategies}. Default: the method's own"


@dataclass
class PretrainArguments:
    """Every `hf-mim pretrain` flag; None means "the default for the dataset and recipe" (`resolve_defaults`)."""

    method: str = field(
        default="mae",
        metadata=_help(
            "the method: %(choices)s; beit takes --tokenizer, which visual-tokenizer trains (default: %(default)s)",
            choices=RegisteredMethods(),
        ),
    )
    dataset: str | None = field(
        default=None,
        metadata=_help(
            "Hub dataset id, local image folder, folder written by save_to_disk, or 'digits' (built in, the default)"
        ),
    )
    dataset_config: str | None = field(default=None, metadata=_help("dataset configuration name (Hub datasets)"))
    split: str = field(default="train", metadata=_help("split to train on (default: %(default)s)"))
    streaming: bool = field(
        default=False,
        metadata=_help(
            "read --dataset as a stream (Hub id, WebDataset tar / parquet / arrow shards: a folder or a glob) while "
            "training, without preparing it on disk first; needs --max-steps"
        ),
    )
    shuffle_buffer: int = field(
        default=1000,
        metadata=_help(
            "--streaming: examples each DataLoader worker holds to shuffle from, besides the shard order "
            "(default: %(default)s; the buffer holds encoded images, about 110 kB each on ImageNet)"
        ),
    )
    image_column: str | None = field(
        default=None, metadata=_help("column holding the images (default: the first Image column, else 'image'/'img')")
    )
    output_dir: str = field(
        default="outputs/pretrain",
        metadata=_help(
            "where checkpoints and the final model go: a new or empty folder, or one an hf-mim run wrote "
            "(default: %(default)s)"
        ),
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata=_help("write into an --output-dir that holds files no hf-mim run wrote (they may be overwritten)"),
    )
    max_steps: int | None = field(default=None, metadata=_help("optimizer steps to train; overrides --epochs"))
    epochs: int | None = field(
        default=None,
        metadata=_help(
            "passes over the data (default: the method's small-data recipe's, cut on a large dataset to the recipe's "
            "budget of images seen: its own where measured ("
            + ", ".join(f"{n}: {s.small.max_images:,}" for n, s in METHOD_SPECS.items() if s.small.max_images)
            + f"), else {SMALL_RECIPE_IMAGES:,}; 1 with --recipe paper)"
        ),
    )
    batch_size: int = field(default=64, metadata=_help("images per device per micro-step (default: %(default)s)"))
    grad_accum: int = field(default=1, metadata=_help("micro-steps per optimizer step (default: %(default)s)"))
    base_lr: float | None = field(
        default=None,
        metadata=_help(
            "learning rate per 256 images: lr = base_lr * effective batch / 256, as in MAE (default: the method's "
            "recipe's, declared in its MethodSpec; docs/pretrain.md lists them)"
        ),
    )
    lr: float | None = field(default=None, metadata=_help("absolute learning rate; overrides --base-lr"))
    weight_decay: float = field(
        default=0.05, metadata=_help("AdamW weight decay on weight matrices (default: %(default)s)")
    )
    warmup_steps: int | None = field(
        default=None, metadata=_help("linear warm-up steps before the cosine decay (default: 5%% of the steps)")
    )
    image_size: int | None = field(
        default=None,
        metadata=_help(
            "input resolution (default: from the images, the most common size of 64 sampled ones: kept where it "
            f"is {MIN_NATIVE_IMAGE_SIZE} to {MAX_AUTO_IMAGE_SIZE} px (cut to a multiple of 4 px below 128, of 16 "
            f"from 128), {MAX_AUTO_IMAGE_SIZE} above, {UPSAMPLED_IMAGE_SIZE} below (the built-in 8x8 digits); a "
            "multiple of the checkpoint's patch size with --init-from)"
        ),
    )
    patch_size: int | None = field(
        default=None,
        metadata=_help(
            "patch size (default: 16 from 128 px up; below, the largest that cuts the image into at least 7x7 "
            "patches: 4 at 28 and 32 px; the checkpoint's with --init-from)"
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_help(
            "continue pretraining from a checkpoint: an hf_mim model of any method, transformers' ViTMAEForPreTraining "
            "(encoder and decoder), ViTModel or ViTForImageClassification (encoder), or facebookresearch/mae's .pth; "
            "a local folder or file, or a Hub id. The encoder takes the checkpoint's shape (not --model-size), a new "
            "image size resamples its position table, a new channel count (--config num_channels) adapts its patch "
            "embedding; a model of the same method also brings its decoder and config. The recipe is the data's, as "
            "from scratch (warm-up, epochs), at a tenth of its base lr (measured: benchmarks/RESULTS.md, issue #30)",
            metavar="PATH_OR_REPO",
        ),
    )
    model_size: str | None = field(
        default=None,
        metadata=_help(
            "ViT-Ti/S/B/L encoder, or mini (6 blocks, width 128: hf_mim's size for small data) (default: the "
            "recipe's: mini for small, base for paper); under the small recipe an encoder deeper than mini's 6 blocks "
            "(by its size or --config's num_hidden_layers) takes a "
            f"base lr of at most {SMALL_RECIPE_DEEP_MAX_BASE_LR:g}; not used by visual-tokenizer",
            choices=sorted(ENCODER_PRESETS),
        ),
    )
    recipe: str = field(
        default="auto",
        metadata=_help(
            "paper: each method's published ImageNet recipe (learning rate, decoder and heads); small: hf_mim's "
            "small-data recipe (the mini encoder, a higher base lr, lighter decoders and heads, more epochs). auto "
            f"(the default) takes small when the images are at most {SMALL_IMAGE_SIZE} px a side or the dataset has "
            f"fewer than {SMALL_DATASET_IMAGES:,} images, else paper; the data's source does not matter. Flags you "
            "give override the recipe",
            choices=["auto", *RECIPES],
        ),
    )
    tokenizer: str | None = field(
        default=None,
        metadata=_help(
            "--method beit: a trained visual tokenizer (a folder written by --method visual-tokenizer, or a Hub "
            "id); without it BEiT uses a random frozen tokenizer, for smoke tests only",
            metavar="PATH_OR_REPO",
        ),
    )
    mask_strategy: str | None = field(
        default=None,
        metadata=_help(_mask_strategy_help()),
    )
    config: str | None = field(
        default=None,
        metadata=_help('JSON file of config field overrides, applied last (e.g. {"mask_ratio": 0.6})', metavar="FILE"),
    )
    mixed_precision: str = field(
        default="no", metadata=_help("autocast precision (default: %(default)s)", choices=["no", "fp16", "bf16"])
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("recompute activations in backward to save memory")
    )
    compile: bool = field(default=False, metadata=_help("torch.compile the model"))
    seed: int = field(
        default=0, metadata=_help("seed for weights, data order, augmentation and masks (default: %(default)s)")
    )
    checkpointing_steps: int | None = field(
        default=None, metadata=_help("write OUTPUT_DIR/checkpoints/step-N every N steps")
    )
    checkpoints_total_limit: int | None = field(
        default=None, metadata=_help("keep only the newest N checkpoints (default: keep all)")
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata=_help("a checkpoint folder, or 'latest' (the newest complete one in OUTPUT_DIR)")
    )
    push_to_hub: str | None = field(
        default=None, metadata=_help("push the final model to this Hub repository", metavar="REPO_ID")
    )
    report_to: str = field(
        default="none",
        metadata=_help("tracker (default: %(default)s)", choices=["none", "tensorboard", "wandb"]),
    )
    num_workers: int | None = field(
        default=None,
        metadata=_help(
            "DataLoader worker processes per device (default: 2; 0 for the built-in digits, whose decoding is "
            "cheaper than a worker's share of the CPU)"
        ),
    )
    logging_steps: int = field(
        default=10, metadata=_help("log loss, lr and images/s every N steps (default: %(default)s)")
    )
    eval_dataset: str | None = field(
        default=None,
        metadata=_help(
            "watch the run learn on a labelled dataset (what hf-mim evaluate --dataset takes; 'digits' is the built-in "
            "one): every --eval-steps steps, a k-NN probe on the encoder's frozen features (its train split the "
            "bank, its test split the queries) and, for a method with pixel targets, the reconstruction error of "
            "its test images; logged, in training_summary.json and drawn on the card",
            metavar="PATH_OR_ID",
        ),
    )
    eval_steps: int | None = field(
        default=None,
        metadata=_help(
            "--eval-dataset: evaluate every N optimizer steps (default: as many evaluations as fit in 5%% of the "
            "training time, start and end included, measured against the first 20 steps; the run logs what it chose)"
        ),
    )
    eval_max_images: int = field(
        default=5000,
        metadata=_help(
            "--eval-dataset: at most this many train images as the probe's bank and a fifth as many test images as "
            "its queries, a seeded random subset of each (default: %(default)s)"
        ),
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata=_help(
            "--eval-dataset: stop after N evaluations without a better k-NN accuracy; the saved model is then the "
            "best evaluation's weights (kept in every checkpoint, so a resumed run ends with them too)"
        ),
    )
    max_non_finite_steps: int = field(
        default=5,
        metadata=_help("stop after this many consecutive steps with a non-finite loss (default: %(default)s)"),
    )
    jpeg_draft: bool = field(
        default=True,
        metadata=_help(
            "decode a JPEG at 1/2, 1/4 or 1/8 scale where its random crop keeps the output's resolution there "
            "(libjpeg's DCT scaling: 1.4x the images/s per core on 1024x768 photos at 224 px; ImageNet's 500x375 "
            "images never qualify at 224 px); --no-jpeg-draft decodes every JPEG in full"
        ),
    )
    # Python only (not a flag): config fields set over the recipe's, before --config's
    config_overrides: dict = field(default_factory=dict, init=True, metadata={"cli": False})
    # filled by resolve_defaults: why each default was chosen (the plan printed before training)
    reasons: dict = field(default_factory=dict, metadata={"cli": False})


RECIPE_MODEL_SIZE = {"small": "mini", "paper": "base"}
CONTINUED_LR_SCALE = 0.1  # --init-from: the recipe's base lr times this (warm-up and steps as from scratch)
PAPER_EPOCHS = 1  # a smoke-test default: the papers train for 300-1600 epochs; pass --epochs


def default_patch_size(image_size) -> int:
    """16 px patches from 128 px up (ViT's); below, the largest size that cuts the shorter side into at least
    MIN_GRID (7) patches evenly (4 px at 28 and 32 px, 8 px at 64 px), so small images still make a grid worth
    masking."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    side = min(height, width)
    if side >= 128:
        return 16
    for patch in range(max(1, side // MIN_GRID), 0, -1):
        if height % patch == 0 and width % patch == 0:
            return patch
    return 1


def image_size_from_data(sizes: list[tuple[int, int]], patch_size: int | None = None) -> tuple[int, str]:
    """(image size, why) from the (width, height) of sampled images: the most common one's shorter side, kept where a
    grid of at least 7x7 patches of 4 px or more fits it exactly (cut to a multiple of 4 px below 128, of 16 from
    128), MAX_AUTO_IMAGE_SIZE above it and UPSAMPLED_IMAGE_SIZE below MIN_NATIVE_IMAGE_SIZE. With `patch_size` (a
    checkpoint's), rounded up to a multiple of it."""
    if not sizes:
        return DEFAULT_IMAGE_SIZE, f"no image could be sampled: the default {DEFAULT_IMAGE_SIZE} px"
    (width, height), count = Counter(sizes).most_common(1)[0]
    side = min(width, height)
    seen = f"the images are {width}x{height} ({count} of {len(sizes)} sampled)"
    if side > MAX_AUTO_IMAGE_SIZE:
        size = MAX_AUTO_IMAGE_SIZE
        why = f"{seen}: shown at {size} px, the largest size chosen without --image-size"
    elif side < MIN_NATIVE_IMAGE_SIZE:
        size = UPSAMPLED_IMAGE_SIZE
        why = f"{seen}: upsampled to {size} px, for a grid of {size // 4}x{size // 4} patches of 4 px"
    else:
        size = side - side % (16 if side >= 128 else 4)
        why = f"{seen}: their own size" + (f", cut to {size} px for the patch grid" if size != side else "")
    if patch_size and size % patch_size:
        size = -(-size // patch_size) * patch_size
        why += f"; rounded up to {size} px, a multiple of the checkpoint's {patch_size} px patches"
    return size, why


def choose_recipe(args: PretrainArguments, num_images: int) -> str:
    """`--recipe auto`: "small" when the images are at most SMALL_IMAGE_SIZE px a side or the dataset has fewer than
    SMALL_DATASET_IMAGES images, else "paper". The scale of the run decides, not where the data comes from."""
    return _recipe_and_reason(args, num_images)[0]


def _recipe_and_reason(args: PretrainArguments, num_images: int) -> tuple[str, str]:
    if args.recipe != "auto":
        return args.recipe, "--recipe"
    size = args.image_size if isinstance(args.image_size, int) else min(args.image_size)
    if size <= SMALL_IMAGE_SIZE:
        return "small", f"auto: images of {size} px, at most {SMALL_IMAGE_SIZE}"
    if num_images < SMALL_DATASET_IMAGES:
        return "small", f"auto: {num_images:,} images, fewer than {SMALL_DATASET_IMAGES:,}"
    return "paper", f"auto: {num_images:,} images of {size} px"


def resolve_defaults(
    args: PretrainArguments,
    num_images: int,
    image_sizes: list[tuple[int, int]] | None = None,
    checkpoint_fields: dict | None = None,
    same_method: bool = False,
) -> PretrainArguments:
    """Fill in what the user left as None: the image size (from `image_sizes`, sampled from the data) and patch
    size, then the recipe, then what the recipe sets (model size, learning rate, epochs, the method's config fields;
    explicit `config_overrides` win). `args.reasons` records why each was chosen.

    `checkpoint_fields` (--init-from): the fields the run's config takes from the checkpoint. The patch size is the
    checkpoint's, no model size applies, and a checkpoint of the run's own method (`same_method`) keeps its config
    over the recipe's fields."""
    reasons = args.reasons
    start_patch = (checkpoint_fields or {}).get("patch_size")
    if args.image_size is None:
        args.image_size, reasons["image_size"] = image_size_from_data(image_sizes or [], start_patch)
    else:
        reasons.setdefault("image_size", "--image-size")
    if args.patch_size is None:
        args.patch_size = start_patch or default_patch_size(args.image_size)
        reasons["patch_size"] = "the checkpoint's" if start_patch else "the largest giving at least a 7x7 grid"
    else:
        reasons.setdefault("patch_size", "--patch-size")
    args.recipe, reasons["recipe"] = _recipe_and_reason(args, num_images)
    if args.num_workers is None:
        # decoding an 8x8 PNG costs microseconds; on two cores a worker would only take CPU time from the model
        args.num_workers = 0 if args.dataset in (None, BUILTIN_DATASET) else 2
    recipe = method_spec(args.method).recipe(args.recipe)
    if args.model_size is None and checkpoint_fields is None:
        args.model_size = RECIPE_MODEL_SIZE[args.recipe]
        reasons["model_size"] = f"the {args.recipe} recipe's"
    if args.base_lr is None and checkpoint_fields is not None:
        # a trained encoder wants smaller steps than a fresh one: benchmarks/bench_adapt.py measured k-NN 93.6 +- 0.0
        # continuing at a tenth of the small recipe's rate against 87.7 +- 0.6 at its full rate (3 seeds)
        args.base_lr = recipe.base_lr * CONTINUED_LR_SCALE
        reasons["base_lr"] = f"a tenth of the {args.recipe} recipe's, for continued pretraining"
    elif args.base_lr is None:
        args.base_lr = recipe.base_lr
        reasons["base_lr"] = f"the {args.recipe} recipe's"
        # the depth the model will have: --config (or a caller's overrides) can deepen any preset
        preset_depth = ENCODER_PRESETS.get(args.model_size, {}).get("num_hidden_layers", 0)
        given = {**args.config_overrides, **config_file_fields(args)}.get("num_hidden_layers")
        depth = given if isinstance(given, int) and not isinstance(given, bool) else preset_depth
        deep = args.recipe == "small" and method_spec(args.method).encoder_presets and depth > SMALL_RECIPE_DEPTH
        if deep and args.base_lr > SMALL_RECIPE_DEEP_MAX_BASE_LR:
            args.base_lr = SMALL_RECIPE_DEEP_MAX_BASE_LR
            encoder = f"{args.model_size} encoder" + (" (--config)" if depth != preset_depth else "")
            reasons["base_lr"] = (
                f"the small recipe's {recipe.base_lr:g}, capped at {SMALL_RECIPE_DEEP_MAX_BASE_LR:g} for the "
                f"{depth}-block {encoder} (the recipe's rates were set on the "
                f"{SMALL_RECIPE_DEPTH}-block mini; docs/pretrain.md)"
            )
    if args.max_steps is None and args.epochs is None:
        args.epochs = recipe.epochs or (PAPER_EPOCHS if args.recipe == "paper" else 1)
        reasons["epochs"] = f"the {args.recipe} recipe's"
        budget = recipe.max_images or SMALL_RECIPE_IMAGES
        if args.recipe == "small" and args.epochs * num_images > budget:
            # the small recipe's epochs were set on 1,437 digits; 60,000 images need fewer passes
            wanted, args.epochs = args.epochs, max(1, budget // num_images)
            reasons["epochs"] = (
                f"the small recipe's {wanted}, cut to {args.epochs} so that the run sees at most "
                f"{budget:,} images ({num_images:,} per epoch)"
            )
    if not same_method:
        # the geometry the model will have: --config (or a caller's overrides) can set it over the flags
        given = {**args.config_overrides, **config_file_fields(args)}
        geometry = given.get("image_size", args.image_size), given.get("patch_size", args.patch_size)
        args.config_overrides = {**recipe.config_for(*geometry), **args.config_overrides}
    return args


def validate(args: PretrainArguments) -> None:
    def bad(flag, value, allowed):
        raise ValueError(f"--{flag.replace('_', '-')}={value!r} is invalid: {allowed}")

    for name in ("dataset", "dataset_config", "split", "image_column", "output_dir", "resume_from_checkpoint",
                 "config", "tokenizer", "push_to_hub", "init_from"):  # fmt: skip
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            # an unset shell variable: "" would mean the built-in data, the current folder or no value at all
            bad(name, value, "a non-empty path, id or name; leave the flag out for its default")
    if args.method not in METHOD_SPECS:
        bad("method", args.method, f"one of {sorted(METHOD_SPECS)}")
    if args.model_size is not None and args.model_size not in ENCODER_PRESETS:
        bad("model_size", args.model_size, f"one of {sorted(ENCODER_PRESETS)}")
    if args.recipe not in ("auto", *RECIPES):
        bad("recipe", args.recipe, f"auto or one of {RECIPES}")
    if args.init_from is not None and args.model_size is not None:
        bad("model_size", args.model_size, "not used with --init-from: the encoder is the checkpoint's")
    if args.init_from is not None and args.method == "visual-tokenizer":
        bad("init_from", args.init_from, "--method visual-tokenizer has no ViT encoder to start from")
    if args.tokenizer is not None and args.method != "beit":
        bad("tokenizer", args.tokenizer, "only used with --method beit")
    if args.mask_strategy is not None and not issubclass(method_spec(args.method).config_class, MaskedMIMConfig):
        masking = sorted(name for name, spec in METHOD_SPECS.items() if issubclass(spec.config_class, MaskedMIMConfig))
        bad("mask_strategy", args.mask_strategy, f"--method {args.method} has none; methods that mask: {masking}")
    for name in ("batch_size", "grad_accum", "logging_steps", "max_non_finite_steps"):
        if getattr(args, name) < 1:
            bad(name, getattr(args, name), "a positive int")
    if args.num_workers is not None and args.num_workers < 0:
        bad("num_workers", args.num_workers, "0 (load in the main process) or more")
    if args.streaming and args.max_steps is None:
        bad("streaming", True, "a stream has no length: pass --max-steps")
    if args.streaming and args.epochs is not None:
        bad("epochs", args.epochs, "not used with --streaming, which trains by --max-steps")
    if args.shuffle_buffer < 1:
        bad("shuffle_buffer", args.shuffle_buffer, "a positive int (1: no shuffle buffer)")
    if args.eval_dataset is not None and not method_spec(args.method).card.encoder:
        bad("eval_dataset", args.eval_dataset, f"--method {args.method} has no encoder whose features a k-NN can probe")
    for name in ("eval_steps", "early_stopping_patience"):
        if getattr(args, name) is not None and args.eval_dataset is None:
            bad(name, getattr(args, name), "only used with --eval-dataset")
    if args.eval_max_images < 20:
        bad("eval_max_images", args.eval_max_images, "at least 20, the k-NN probe's neighbours")
    for name in ("max_steps", "epochs", "checkpointing_steps", "checkpoints_total_limit", "eval_steps",
                 "early_stopping_patience"):  # fmt: skip
        value = getattr(args, name)
        if value is not None and value < 1:
            bad(name, value, "a positive int")
    if args.push_to_hub is not None:
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


def config_file_fields(args: PretrainArguments) -> dict:
    """The config fields of `--config` (a JSON file of one object); {} without it."""
    if not args.config:
        return {}
    try:
        fields = json.loads(Path(args.config).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--config {args.config}: not a readable JSON object ({one_line(err)})") from None
    if not isinstance(fields, dict):
        raise ValueError(
            f"--config {args.config} holds a JSON {type(fields).__name__}; allowed: an object of config fields"
        )
    return fields


def build_config(args: PretrainArguments, spec, checkpoint_fields: dict | None = None):
    """The run's model config: the encoder preset (or, with --init-from, `checkpoint_fields`), the image geometry,
    the recipe's and the caller's config fields, then --config's, --tokenizer and --mask-strategy."""
    overrides = {**args.config_overrides, **config_file_fields(args)}
    if args.tokenizer is not None:
        overrides["tokenizer_name_or_path"] = args.tokenizer
    if args.mask_strategy is not None and "mask_strategy" not in overrides:  # --config's value wins
        overrides["mask_strategy"] = args.mask_strategy
    encoder = ENCODER_PRESETS[args.model_size] if checkpoint_fields is None else dict(checkpoint_fields)
    if (
        checkpoint_fields is not None
        and overrides.get("num_channels", encoder["num_channels"]) != encoder["num_channels"]
    ):
        # the checkpoint's per-channel statistics do not fit the new channel count: the config's defaults for it
        for name in ("image_mean", "image_std"):
            encoder.pop(name, None)
    fields = {**encoder, "image_size": args.image_size, "patch_size": args.patch_size}
    return build_config_fields(spec, fields, overrides)


def setup_logging(main_process: bool) -> None:
    """hf_mim's messages at INFO on the main process (WARNING on the others); the root logger, and so every other
    library, at WARNING: at INFO each HTTP request of the Hub client would be a line of its own."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hf_mim").setLevel(logging.INFO if main_process else logging.WARNING)


__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "MAX_AUTO_IMAGE_SIZE",
    "MIN_NATIVE_IMAGE_SIZE",
    "UPSAMPLED_IMAGE_SIZE",
    "PretrainArguments",
    "build_config",
    "choose_recipe",
    "default_patch_size",
    "image_size_from_data",
    "setup_logging",
    "resolve_defaults",
    "validate",
]
