"""Per-method training hooks. The trainer knows nothing about any method; each method says here how to build its
model, what randomness each sample carries, how to compute its loss, and what to do after an optimizer step.

Adding a method to `hf-mim pretrain`: subclass `TrainingMethod` in the method's own module (or here) and add it to
`TRAINING_METHODS`. Hooks for later methods:
- `after_optimizer_step`: C-MAE's EMA teacher update, once per optimizer step (not per accumulation micro-step),
  from the unwrapped student;
- `checkpoint_objects`: extra state saved and restored with every checkpoint (an EMA teacher, a second optimizer);
- `training_step`: full control of one micro-step (ADIOS's alternating two-optimizer update).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..modeling.mae import MAEConfig, MAEForPreTraining

# ViT-Ti/S/B/L encoders (hidden, depth, heads, MLP width), as in DeiT / ViT.
ENCODER_PRESETS = {
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


class TrainingMethod:
    name: str = ""
    config_class = None
    model_class = None
    #: config fields the method's paper uses whatever the encoder size (MAE: its 8-block, 512-wide decoder)
    paper_defaults: dict = {}

    def build_config(self, **fields):
        return self.config_class(**{**self.paper_defaults, **fields})

    def build_model(self, config):
        return self.model_class(config)

    def sample_extras(self, config) -> Callable[[torch.Generator], dict[str, torch.Tensor]] | None:
        """Per-sample random inputs drawn in the data pipeline from the sample's own generator (masks, noise)."""
        return None

    def loss(self, model, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def after_optimizer_step(self, accelerator, model, step: int) -> None:
        """Called once per optimizer step, after the update, on every process."""

    def checkpoint_objects(self) -> list:
        """Objects with `state_dict` / `load_state_dict` to save and restore with each checkpoint."""
        return []


class MAEMethod(TrainingMethod):
    name = "mae"
    config_class = MAEConfig
    model_class = MAEForPreTraining
    paper_defaults = dict(
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
        mask_ratio=0.75,
        norm_pix_loss=True,
    )

    def sample_extras(self, config):
        num_patches = config.num_patches

        def extras(generator: torch.Generator) -> dict[str, torch.Tensor]:
            # transformers' ViTMAE noise: the lowest-noise patches stay visible
            return {"noise": torch.rand(num_patches, generator=generator)}

        return extras

    def loss(self, model, batch):
        return model(pixel_values=batch["pixel_values"], noise=batch["noise"]).loss


TRAINING_METHODS: dict[str, type[TrainingMethod]] = {"mae": MAEMethod}

__all__ = ["ENCODER_PRESETS", "TRAINING_METHODS", "TrainingMethod", "MAEMethod"]
