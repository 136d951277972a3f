"""Encoder sizes, recipe thresholds, and building a method's config from what a run asks for."""

from __future__ import annotations

import inspect

from transformers import PretrainedConfig

from ..modeling.spec import SMALL_IMAGE_SIZE

# ViT-Ti/S/B/L encoders (hidden, depth, heads, MLP width), as in DeiT / ViT; "mini" is hf_mim's own size for small
# data (not a published one): on the 1,437 training digits a 6 x 128 encoder pretrains 3.5x faster than ViT-Ti and
# fine-tunes 4x faster (benchmarks/RESULTS.md, issue 16).
ENCODER_PRESETS = {
    "mini": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}

RECIPES = ("paper", "small")
# `--recipe auto` takes the small-data recipe for images of at most SMALL_IMAGE_SIZE px a side, or datasets of fewer
# than SMALL_DATASET_IMAGES images; the paper recipes are ImageNet's (1.28 M images at 224 px).
SMALL_DATASET_IMAGES = 50_000
# The small recipe's epochs, set on the 1,437 training digits (100 for MAE: 143,700 images), are cut for a larger
# dataset so that a run sees at most this many images: 10 epochs of Fashion-MNIST's 60,000 (issue 28 measured 3 and
# 10 epochs there; benchmarks/RESULTS.md). A method's small `Recipe.max_images` replaces it where that method's own
# length was measured: MAE's 1,200,000 (20 epochs of Fashion-MNIST).
SMALL_RECIPE_IMAGES = 600_000
# The small recipe's base learning rates were set on the 6-block mini encoder. From 1e-2, MAE's, the 12-block ViT-Ti
# falls below random initialisation on the held-out digits (600 steps: k-NN 34.4 against 44.7); at 1.5e-3 it reaches
# k-NN 79.2 and fine-tunes to 92.8 against 54.7 (benchmarks/RESULTS.md, issue 28). An encoder deeper than mini takes
# at most this base lr under the small recipe; recipes below it are kept.
SMALL_RECIPE_DEEP_MAX_BASE_LR = 1.5e-3
SMALL_RECIPE_DEPTH = ENCODER_PRESETS["mini"]["num_hidden_layers"]


def config_fields(config_class) -> set[str]:
    """Every keyword `config_class` understands: its own and its bases' `__init__` arguments, and the generic
    `PretrainedConfig` attributes."""
    fields = set(PretrainedConfig().to_dict())
    for cls in config_class.__mro__:
        if cls is PretrainedConfig:
            break
        if not issubclass(cls, PretrainedConfig) or "__init__" not in cls.__dict__:
            continue  # a field-group mixin, or a subclass keeping its parent's __init__
        params = inspect.signature(cls.__init__).parameters.values()
        fields |= {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"}
    return fields


def build_config_fields(spec, encoder_fields: dict, overrides: dict):
    """The method's config from an encoder size (`ENCODER_PRESETS`, image and patch size) and the run's config
    overrides, which must be fields of the config. A method without a ViT takes only the image geometry."""
    config_class = spec.config_class
    known = config_fields(config_class)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"--config sets {unknown}, which {config_class.__name__} does not have; "
            f"known fields: {sorted(known - set(PretrainedConfig().to_dict()))}"
        )
    if not spec.encoder_presets:
        encoder_fields = {
            k: encoder_fields[k] for k in ("image_size", "patch_size", "num_channels") if k in encoder_fields
        }
    fields = {**encoder_fields, **overrides}
    if spec.prepare_config is not None:
        fields = spec.prepare_config(fields)
    return config_class(**fields)


__all__ = [
    "ENCODER_PRESETS",
    "RECIPES",
    "SMALL_DATASET_IMAGES",
    "SMALL_RECIPE_DEEP_MAX_BASE_LR",
    "SMALL_RECIPE_DEPTH",
    "SMALL_RECIPE_IMAGES",
    "SMALL_IMAGE_SIZE",
    "build_config_fields",
    "config_fields",
]
