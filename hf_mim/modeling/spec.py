"""What hf_mim knows about a method, declared once beside its model: `METHOD = MethodSpec(...)` at the end of the
method's file, registered by one line in `auto.py`'s `METHOD_MODULES`.

The trainer, the model cards, `hf-mim visualize`, the CLI's method list and the cross-cutting tests all read the
registry that `auto.py` fills; none of them names a method. This file imports nothing but the standard library: it
travels with every method file as remote code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: The ViT of every method's `tiny_config`: 32 px images, a 4x4 grid of 8 px patches, 2 blocks of width 32 with 4 heads.
TINY_VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)

#: Kong & Zhang's paper, the source of both C-MAE and R-MAE.
KONG_ZHANG_BIBTEX = """@article{kong2022understanding,
  title   = {Understanding Masked Image Modeling via Learning Occlusion Invariant Feature},
  author  = {Kong, Xiangwen and Zhang, Xiangyu},
  journal = {arXiv preprint arXiv:2208.04164},
  year    = {2022}
}"""


#: Images of at most this many px a side are small: `hf-mim pretrain --recipe auto` trains them with each method's
#: small recipe, and `hf-mim evaluate --recipe auto` fine-tunes a model of that image size with the small-image one.
SMALL_IMAGE_SIZE = 64


@dataclass(frozen=True)
class Recipe:
    """What one scale of training sets for a method, when the user does not.

    Args:
        base_lr: peak learning rate per 256 images; `hf-mim pretrain` uses base_lr * effective batch / 256 (MAE's
            linear scaling rule).
        config: config fields set over the config class's defaults (which are the paper's). A value may be a
            function `(image_size, patch_size) -> value` for a field that must fit the run's image geometry
            (SimMIM's mask squares); `config_for` resolves it.
        epochs: passes over the data; None leaves the run's default.
        max_images: the most images a run of the small recipe sees: on a dataset larger than the one `epochs` was
            set on, the epochs are cut to fit. None takes the small recipe's shared budget
            (`hf_mim.training.presets.SMALL_RECIPE_IMAGES`); a method sets its own where one was measured.
    """

    base_lr: float
    config: dict = field(default_factory=dict)
    epochs: int | None = None
    max_images: int | None = None

    def config_for(self, image_size, patch_size: int) -> dict:
        """The recipe's config fields for a run of this image size and patch size."""
        return {k: v(image_size, patch_size) if callable(v) else v for k, v in self.config.items()}


@dataclass(frozen=True)
class MethodCard:
    """What a model card says about a method.

    Args:
        display_name: the method's name in prose ("C-MAE").
        paper_title / paper_url: the paper the method comes from.
        paragraph: what the method does, for readers who do not know it.
        bibtex: the citation block.
        target: the prediction target in words, from a config (it may read fields such as `norm_pix_loss`).
        limitations: method-specific limitations, one sentence each.
        encoder: whether the weights hold a ViT encoder whose features are the product (the card then shows
            feature extraction and fine-tuning); a visual tokenizer's do not.
        architecture: `architecture(config) -> ((row name, value), ...)`: the card's architecture rows for the
            method's own parts (a decoder, the masking, a quantizer), shown after the shared ones (class,
            parameters, image and patch size, the ViT encoder) and before the pooling and target rows.
    """

    display_name: str
    paper_title: str
    paper_url: str
    paragraph: str
    bibtex: str
    target: Callable[[object], str]
    limitations: tuple[str, ...] = ()
    encoder: bool = True
    architecture: Callable[[object], tuple[tuple[str, str], ...]] = lambda config: ()

    @property
    def article(self) -> str:
        """ "An" or "A" before the name as it is spoken: "an MAE", "an R-MAE", "a SimMIM"."""
        first = self.display_name[:1].upper()
        if self.display_name[:2].isupper():  # an initialism, read letter by letter: em, ar, ef, ...
            return "An" if first in "AEFHILMNORSX" else "A"
        return "An" if first in "AEIOU" else "A"


def masking_rows(config) -> tuple[tuple[str, str], ...]:
    """The card's row for a config that masks patches (`MaskedMIMConfig`)."""
    squares = getattr(config, "mask_patch_size", None) if config.mask_strategy == "mask_patch" else None
    return (
        (
            "Masking",
            f"{config.mask_strategy}, ratio {config.mask_ratio}" + (f", {squares} px squares" if squares else ""),
        ),
    )


def decoder_rows(config) -> tuple[tuple[str, str], ...]:
    """The card's row for a config with a Transformer decoder (`MAEDecoder`'s fields)."""
    return (
        (
            "Decoder",
            f"width {config.decoder_hidden_size}, depth {config.decoder_num_hidden_layers}, "
            f"{config.decoder_num_attention_heads} heads",
        ),
    )


@dataclass(frozen=True)
class Picture:
    """The picture a method's card and `hf-mim visualize` show.

    Args:
        kind: how it is drawn: "reconstruction" (pixel targets; also gives the run's reconstruction error),
            "masks" (an occlusion model's masks), "tokens" (visual tokens), or "panels" (the model's own
            `picture_panels(pixel_values, generator)`, a list of (B, 3, H, W) images in [0, 1], one column each).
        file: the PNG's name beside the weights.
        alt / caption: the card's alt text and caption.
    """

    kind: str
    file: str
    alt: str
    caption: str


#: The picture of every method with pixel targets.
RECONSTRUCTION_PICTURE = Picture(
    kind="reconstruction",
    file="reconstruction.png",
    alt="Reconstructions",
    caption="Per row: the image, the masked input, the reconstruction, and the reconstruction with the visible "
    "patches pasted back. Normalised-pixel targets are shown de-normalised with the visible patches' statistics.",
)


@dataclass(frozen=True)
class MethodSpec:
    """One method, as the rest of hf_mim sees it.

    Args:
        name: the `hf-mim pretrain --method` name and the Hub tag.
        auto_classes: {"AutoConfig": config class, "AutoModel": ..., ...}: registered with transformers, and
            written as `auto_map` into saved configs (remote code).
        card: the model card's text (`MethodCard`).
        paper: the paper's recipe (the config defaults are the paper's; an ImageNet-scale learning rate).
        small: hf_mim's recipe for small images or datasets (see `hf-mim pretrain --recipe`).
        betas: AdamW's betas.
        crop_scale: the area range of the random resized crop.
        sample_inputs: `sample_inputs(config, grid, generator) -> {name: tensor}`, the random inputs of one image
            (masks, noise, jitter) besides its pixels. The data pipeline draws them per sample from the sample's
            generator; the model draws them the same way (`draw_inputs`) when a call does not give them. None: the
            model takes pixels only.
        picture: the method's picture, or None (C-MAE's targets are features: there is nothing to draw).
        tiny_config: config fields of a model small enough for unit tests (32 px images of 8 px patches): the one
            tiny config of the method, which its tests and the cross-cutting tests build on.
        encoder_presets: whether `--model-size` (a ViT width and depth) applies.
        prepare_config: maps the config fields a run asks for to those the config is built with (BEiT reads its
            tokenizer's vocabulary size); None keeps them.
        adversary: a second player trained against the model with its own optimizer (ADIOS's occlusion model,
            MAE's learned masks); `adversary_for(config)` says whether a config has it.
        config_pictures: `config_pictures(config) -> tuple[Picture, ...]`: pictures some configs add to the
            method's (MAE's learned masks); `pictures(config)` gives them all.
    """

    name: str
    auto_classes: dict
    card: MethodCard
    paper: Recipe
    small: Recipe
    betas: tuple[float, float] = (0.9, 0.95)
    crop_scale: tuple[float, float] = (0.2, 1.0)
    sample_inputs: Callable | None = None
    picture: Picture | None = None
    tiny_config: dict = field(default_factory=dict)
    encoder_presets: bool = True
    prepare_config: Callable[[dict], dict] | None = None
    adversary: Adversary | None = None
    config_pictures: Callable[[object], tuple[Picture, ...]] | None = None

    def adversary_for(self, config) -> Adversary | None:
        """The adversary a model of this config trains against, or None."""
        adversary = self.adversary
        return adversary if adversary is not None and adversary.applies(config) else None

    def pictures(self, config) -> tuple[Picture, ...]:
        """Every picture of a model of this config: the method's, then those the config adds."""
        own = (self.picture,) if self.picture is not None else ()
        return own + (tuple(self.config_pictures(config)) if self.config_pictures is not None else ())

    @property
    def config_class(self):
        return self.auto_classes["AutoConfig"]

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def pretraining_class(self):
        """The class `hf-mim pretrain` trains."""
        classes = self.auto_classes
        return classes["AutoModelForPreTraining"] if "AutoModelForPreTraining" in classes else classes["AutoModel"]

    def recipe(self, name: str) -> Recipe:
        if name not in ("paper", "small"):
            raise ValueError(f"recipe={name!r} is invalid: one of ('paper', 'small')")
        return getattr(self, name)


@dataclass(frozen=True)
class Adversary:
    """A part of the model trained to maximise what the rest minimises, with its own optimizer, stepped after each
    main optimizer step on the same micro-batches (ADIOS's alternating min-max; MAE's learned masks).

    Args:
        parameters: `parameters(model) -> list`: the adversary's parameters, which the main optimizer leaves out.
        learning_rate: `learning_rate(config) -> float`.
        step: `step(accelerator, model, optimizer, micro_batches) -> {metric: tensor}`: the adversary's update on
            the micro-batches (each a (batch, weight) pair) the main optimizer just stepped on; the method's own code.
        main_inputs: keyword arguments of the model's forward in the main step (ADIOS: `phase="encoder"`).
        applies: `applies(config) -> bool`: whether a model of this config has the adversary (MAE's only with
            `mask_strategy="learned"`).
        replays: whether `step` runs the micro-batches again (ADIOS), so that the trainer must keep them; False when
            it steps on the gradients the main backward already gave the adversary (MAE's learned masks).
    """

    parameters: Callable
    learning_rate: Callable
    step: Callable
    main_inputs: dict = field(default_factory=dict)
    applies: Callable = lambda config: True
    replays: bool = True


def draw_inputs(sample_inputs: Callable, config, grid, batch_size: int, device=None) -> dict:
    """A batch's random inputs, drawn per image as the data pipeline draws them, from the global generator."""
    import torch

    draws = [sample_inputs(config, grid, None) for _ in range(batch_size)]
    batch = {key: torch.stack([d[key] for d in draws]) for key in draws[0]}
    if device is not None and torch.device(device).type == "cuda":
        # pinned, then asynchronous: a copy from pageable memory would first wait for every kernel already queued
        return {key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()}
    return {key: value.to(device) for key, value in batch.items()}


__all__ = [
    "KONG_ZHANG_BIBTEX",
    "RECONSTRUCTION_PICTURE",
    "TINY_VIT",
    "Adversary",
    "MethodCard",
    "MethodSpec",
    "Picture",
    "Recipe",
    "SMALL_IMAGE_SIZE",
    "decoder_rows",
    "draw_inputs",
    "masking_rows",
]
