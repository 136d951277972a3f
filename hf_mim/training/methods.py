"""Per-method training hooks. The trainer knows nothing about any method; each method says here how to build its
model, what randomness each sample carries, how to compute its loss, and what to do after an optimizer step.

Adding a method to `hf-mim pretrain`: subclass `TrainingMethod` in the method's own module (or here) and add it to
`TRAINING_METHODS`. Hooks for later methods:
- `after_optimizer_step`: C-MAE's EMA teacher update, once per optimizer step (not per accumulation micro-step),
  from the unwrapped student;
- `checkpoint_objects`: extra state saved and restored with every checkpoint (an EMA teacher, a second optimizer);
- `second_parameters` / `second_learning_rate` / `second_loss`: a second optimizer, stepped after the main one on
  the same micro-batches (ADIOS's occlusion model in its alternating min-max).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import PretrainedConfig

from ..modeling.adios import ADIOSConfig, ADIOSForPreTraining
from ..modeling.beit import BEiTConfig, BEiTForPreTraining
from ..modeling.cmae import CMAEConfig, CMAEForPreTraining
from ..modeling.mae import MAEConfig, MAEForPreTraining
from ..modeling.rmae import RMAEConfig, RMAEForPreTraining
from ..modeling.simmim import SimMIMConfig, SimMIMForPreTraining
from ..modeling.tokenizer import VisualTokenizer, VisualTokenizerConfig

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
SMALL_IMAGE_SIZE = 64
SMALL_DATASET_IMAGES = 50_000
# passes over a small dataset when neither --epochs nor --max-steps is given: the quality benchmark's budget
SMALL_EPOCHS = 50


@dataclass(frozen=True)
class Recipe:
    """What one scale of training sets for a method, when the user does not.

    Args:
        base_lr: peak learning rate per 256 images; `hf-mim pretrain` uses base_lr * effective batch / 256 (MAE's
            linear scaling rule).
        config: config fields set over the config class's defaults (which are the paper's).
        epochs: passes over the data; None leaves the run's default.
    """

    base_lr: float
    config: dict = field(default_factory=dict)
    epochs: int | None = None


def config_fields(config_class) -> set[str]:
    """Every keyword `config_class` understands: its own and its bases' `__init__` arguments, and the generic
    `PretrainedConfig` attributes."""
    fields = set(PretrainedConfig().to_dict())
    for cls in config_class.__mro__:
        if cls is PretrainedConfig or not issubclass(cls, PretrainedConfig):
            break
        params = inspect.signature(cls.__init__).parameters.values()
        fields |= {p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"}
    return fields


class TrainingMethod:
    name: str = ""
    config_class = None
    model_class = None
    #: the paper's recipe (config defaults are the paper's; ImageNet-scale learning rate per 256 images)
    paper: Recipe = Recipe(base_lr=1.5e-4)
    #: the small-data recipe: images of at most 64 px, or fewer than 50,000 of them (see `choose_recipe`)
    small: Recipe = Recipe(base_lr=1e-2, epochs=SMALL_EPOCHS)
    #: AdamW's betas
    betas: tuple[float, float] = (0.9, 0.95)
    #: scale range of the random resized crop
    crop_scale: tuple[float, float] = (0.2, 1.0)
    #: whether the model is a ViT built from --model-size (ENCODER_PRESETS)
    uses_encoder_presets: bool = True

    @classmethod
    def recipe(cls, name: str) -> Recipe:
        if name not in RECIPES:
            raise ValueError(f"recipe={name!r} is invalid: one of {RECIPES}")
        return getattr(cls, name)

    def build_config(self, encoder_fields: dict, overrides: dict):
        unknown = sorted(set(overrides) - config_fields(self.config_class))
        if unknown:
            raise ValueError(
                f"--config sets {unknown}, which {self.config_class.__name__} does not have; "
                f"known fields: {sorted(config_fields(self.config_class) - set(PretrainedConfig().to_dict()))}"
            )
        return self.config_class(**{**encoder_fields, **overrides})

    def build_model(self, config):
        return self.model_class(config)

    def sample_extras(self, config) -> Callable[[torch.Generator], dict[str, torch.Tensor]] | None:
        """Per-sample random inputs drawn in the data pipeline from the sample's own generator (masks, noise)."""
        return None

    def loss(self, model, batch: dict) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-step's loss, optionally with scalar metrics to log beside it (averaged like the loss)."""
        raise NotImplementedError

    def on_train_start(self, accelerator, model, max_steps: int) -> None:
        """Called once before the first step (after a resume has restored the state), on every process."""

    def after_optimizer_step(self, accelerator, model, step: int) -> None:
        """Called once per optimizer step, after the update, on every process."""

    def checkpoint_objects(self) -> list:
        """Objects with `state_dict` / `load_state_dict` to save and restore with each checkpoint. Their tensors
        also enter the end-of-run check that every process holds the same state."""
        return []

    def save_outputs(self, model, output_dir: str) -> None:
        """Write extra files beside the final model (main process only)."""

    # -- a second optimizer, stepped after the main one on the same micro-batches (ADIOS's occlusion model) ----------

    def second_parameters(self, model) -> list:
        """Parameters the main optimizer leaves to the method's own optimizer; none by default."""
        return []

    def second_learning_rate(self, config) -> float:
        raise NotImplementedError

    def second_loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss the second optimizer minimises, on a micro-batch, after the main optimizer stepped on the same
        micro-batches; with metrics to log."""
        raise NotImplementedError


class MaskedMethod(TrainingMethod):
    """A method whose model takes `bool_masked_pos`: each sample's mask is drawn in the data pipeline from the
    config's strategy and the sample's generator, so a seed reproduces every mask of a run."""

    def sample_extras(self, config):
        spec, grid = config.masking_spec(), config.grid_size
        return lambda generator: {"bool_masked_pos": spec.sample(grid, generator)}

    def loss(self, model, batch):
        return model(pixel_values=batch["pixel_values"], bool_masked_pos=batch["bool_masked_pos"]).loss


class MAEMethod(MaskedMethod):
    name = "mae"
    config_class = MAEConfig
    model_class = MAEForPreTraining
    # Small data (measured on the digits; benchmarks/RESULTS.md, issue 16): a one-block 128-wide decoder fine-tunes
    # as well as two blocks (90.6 vs 89.4, 3 seeds) and runs 13% faster; plain pixel targets, since
    # norm_pix_loss on upsampled 8x8 digits fine-tunes no better and reconstructs nothing a picture can show; 100
    # epochs (60: 87.3, 30: 79.8).
    small = Recipe(
        base_lr=1e-2,
        config=dict(
            decoder_hidden_size=128,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=512,
            norm_pix_loss=False,
        ),
        epochs=100,
    )

    def sample_extras(self, config):
        if config.mask_strategy != "random":
            return super().sample_extras(config)
        num_patches = config.num_patches

        def extras(generator: torch.Generator) -> dict[str, torch.Tensor]:
            # transformers' ViTMAE noise: the lowest-noise patches stay visible
            return {"noise": torch.rand(num_patches, generator=generator)}

        return extras

    @staticmethod
    def mask_inputs(batch: dict) -> dict:
        """`noise` (random strategy) or `bool_masked_pos` (any other), whichever the pipeline drew."""
        return {key: batch[key] for key in ("noise", "bool_masked_pos") if key in batch}

    def loss(self, model, batch):
        return model(pixel_values=batch["pixel_values"], **self.mask_inputs(batch)).loss


class RMAEMethod(MAEMethod):
    """MAE's recipe and masks; the model adds the full-image branch and the relaxed objective."""

    name = "rmae"
    config_class = RMAEConfig
    model_class = RMAEForPreTraining
    # MAE's small recipe; at 3x MAE's step cost, the benchmark's 50 epochs rather than MAE's 100
    small = replace(MAEMethod.small, epochs=SMALL_EPOCHS)

    def loss(self, model, batch):
        out = model(pixel_values=batch["pixel_values"], **self.mask_inputs(batch))
        return out.loss, {"consistency_loss": out.consistency_loss, "autoencoding_loss": out.autoencoding_loss}


class TeacherMethod(TrainingMethod):
    """A method whose model may carry an `EMATeacher` (`model.teacher`; absent when its config has none): updated
    after every optimizer step from the unwrapped student, checkpointed, and written to ema_teacher.safetensors."""

    def build_model(self, config):
        self.model = self.model_class(config)  # kept: the teacher is a checkpoint object, not a submodule
        return self.model

    def on_train_start(self, accelerator, model, max_steps):
        unwrapped = accelerator.unwrap_model(model)
        if hasattr(unwrapped, "teacher"):
            unwrapped.teacher.total_steps = max_steps

    def after_optimizer_step(self, accelerator, model, step):
        accelerator.unwrap_model(model).update_teacher()

    def checkpoint_objects(self):
        # built from the prepared student's weights, on its device
        return [self.model.teacher] if hasattr(self.model, "teacher") else []

    def save_outputs(self, model, output_dir):
        if hasattr(model, "teacher"):
            import os

            from .callbacks import TEACHER_FILE, save_teacher

            save_teacher(model.teacher, os.path.join(output_dir, TEACHER_FILE))


class CMAEMethod(TeacherMethod):
    """C-MAE: both views' masks and colour jitter drawn per sample in the data pipeline; the EMA teacher updated
    after every optimizer step from the unwrapped student, checkpointed, and written to ema_teacher.safetensors."""

    name = "cmae"
    config_class = CMAEConfig
    model_class = CMAEForPreTraining
    # Small data: at base lr 1e-2 (2.5e-3 at batch 64) the token-wise InfoNCE stays at chance on the digits (4.156 ->
    # 4.130 in 150 steps, chance ln 64 = 4.159); base lr 1e-3 (4.11 -> 3.99) and masking half of each view instead of
    # 75% (4.07 -> 3.72) each let it learn, both together most (4.00 -> 3.63); a lower teacher momentum alone does
    # not (RESULTS.md, issue 16). On an 8x8 grid 75% leaves each view only 16 patches.
    small = Recipe(
        base_lr=1e-3,
        config=dict(projection_hidden_size=512, projection_size=128, mask_ratio=0.5),
        epochs=SMALL_EPOCHS,
    )

    def sample_extras(self, config):
        from ..modeling.augment import sample_view_jitter

        spec, grid = config.masking_spec(), config.grid_size

        def extras(generator):
            return {
                "bool_masked_pos": torch.stack([spec.sample(grid, generator) for _ in range(2)]),
                "color_jitter": sample_view_jitter(generator, config),
            }

        return extras

    def loss(self, model, batch):
        return model(
            pixel_values=batch["pixel_values"],
            bool_masked_pos=batch["bool_masked_pos"],
            color_jitter=batch["color_jitter"],
        ).loss


class SimMIMMethod(MaskedMethod):
    name = "simmim"
    config_class = SimMIMConfig
    model_class = SimMIMForPreTraining
    # SimMIM's ViT-B recipe: lr 8e-4 at batch 2048, AdamW (0.9, 0.999), crops of scale 0.67-1
    paper = Recipe(base_lr=1e-4)
    # 32 px mask squares would be a whole 32 px image; 2x2-patch squares, as SimMIM's 32 px squares of ViT-B/16
    small = Recipe(base_lr=1e-2, config=dict(mask_patch_size=8), epochs=SMALL_EPOCHS)
    betas = (0.9, 0.999)
    crop_scale = (0.67, 1.0)


class BEiTMethod(MaskedMethod):
    name = "beit"
    config_class = BEiTConfig
    model_class = BEiTForPreTraining
    # BEiT's ViT-B recipe: lr 1.5e-3 at batch 2048, AdamW (0.9, 0.999), crops of scale 0.08-1
    paper = Recipe(base_lr=1.875e-4)
    # an 8x8 grid: BEiT's 16-patch minimum block would be a quarter of the image
    small = Recipe(base_lr=1e-2, config=dict(mask_min_num_patches=4), epochs=SMALL_EPOCHS)
    betas = (0.9, 0.999)
    crop_scale = (0.08, 1.0)

    def build_config(self, encoder_fields, overrides):
        path = overrides.get("tokenizer_name_or_path")
        if path and "vocab_size" not in overrides:
            # the head predicts the tokenizer's vocabulary
            overrides = {**overrides, "vocab_size": VisualTokenizerConfig.from_pretrained(path).vocab_size}
        return super().build_config(encoder_fields, overrides)

    def loss(self, model, batch):
        out = model(pixel_values=batch["pixel_values"], bool_masked_pos=batch["bool_masked_pos"])
        return out.loss, {"accuracy": out.accuracy}


class VisualTokenizerMethod(TrainingMethod):
    name = "visual-tokenizer"
    config_class = VisualTokenizerConfig
    model_class = VisualTokenizer
    paper = Recipe(base_lr=1e-3)
    small = Recipe(base_lr=1e-2, config=dict(vocab_size=512, hidden_channels=32), epochs=20)
    betas = (0.9, 0.99)
    # the tokenizer should see images as BEiT will feed them: BEiT's crop range
    crop_scale = (0.08, 1.0)
    uses_encoder_presets = False

    def build_config(self, encoder_fields, overrides):
        # a convolutional model: of the encoder fields only the image geometry applies
        geometry = {k: encoder_fields[k] for k in ("image_size", "patch_size", "num_channels") if k in encoder_fields}
        return super().build_config(geometry, overrides)

    def loss(self, model, batch):
        out = model(pixel_values=batch["pixel_values"])
        return out.loss, {
            "reconstruction_loss": out.reconstruction_loss,
            "perplexity": out.perplexity,
            "codebook_usage": out.codebook_usage,
        }

    def after_optimizer_step(self, accelerator, model, step):
        accelerator.unwrap_model(model).set_training_step(step)


class ADIOSMethod(TeacherMethod):
    """ADIOS's alternating min-max: the main optimizer trains the encoder side on `phase="encoder"`; after each of
    its steps the occlusion model's own AdamW (`occlusion_learning_rate`) steps on `phase="occlusion"` over the same
    micro-batches, so it faces the updated encoder, as in the reference."""

    name = "adios"
    config_class = ADIOSConfig
    model_class = ADIOSForPreTraining
    paper = Recipe(base_lr=1e-3)
    # Small data: ADIOS-s (one mask of the N per image and step, the paper's cheaper variant): 5x less work per step
    # than all six masks. Base lr 1e-3, as for C-MAE: in 150 steps the contrastive loss falls from 2.79 to 0.64, and
    # at 1e-2 only from 4.14 to 1.80 (RESULTS.md, issue 16).
    small = Recipe(
        base_lr=1e-3,
        config=dict(projection_hidden_size=512, projection_size=128, prediction_hidden_size=256, single_mask=True),
        epochs=SMALL_EPOCHS,
    )
    betas = (0.9, 0.999)
    crop_scale = (0.08, 1.0)  # SimCLR's crop

    def sample_extras(self, config):
        from ..modeling.augment import sample_view_jitter

        def extras(generator):
            out = {"color_jitter": sample_view_jitter(generator, config)}
            if config.single_mask:
                out["mask_choice"] = torch.randint(config.num_masks, (), generator=generator)
            return out

        return extras

    @staticmethod
    def _inputs(batch):
        return {k: batch[k] for k in ("pixel_values", "color_jitter", "mask_choice") if k in batch}

    def loss(self, model, batch):
        out = model(**self._inputs(batch), phase="encoder")
        return out.loss, {"mask_penalty": out.mask_penalty}

    def second_parameters(self, model):
        return model.occlusion_parameters()

    def second_learning_rate(self, config):
        return config.occlusion_learning_rate

    def second_loss(self, model, batch):
        out = model(**self._inputs(batch), phase="occlusion")
        areas = out.masks.detach().float().mean(dim=(-2, -1))  # (B, N)
        return out.loss, {
            "occlusion_loss": out.loss.detach(),
            "mask_area_min": areas.min(dim=1).values.mean(),
            "mask_area_max": areas.max(dim=1).values.mean(),
        }


TRAINING_METHODS: dict[str, type[TrainingMethod]] = {
    method.name: method
    for method in (MAEMethod, RMAEMethod, CMAEMethod, SimMIMMethod, BEiTMethod, VisualTokenizerMethod, ADIOSMethod)
}

__all__ = [
    "ENCODER_PRESETS",
    "RECIPES",
    "Recipe",
    "SMALL_DATASET_IMAGES",
    "SMALL_IMAGE_SIZE",
    "TRAINING_METHODS",
    "TrainingMethod",
    "MaskedMethod",
    "MAEMethod",
    "RMAEMethod",
    "TeacherMethod",
    "CMAEMethod",
    "SimMIMMethod",
    "BEiTMethod",
    "VisualTokenizerMethod",
    "ADIOSMethod",
    "config_fields",
]
