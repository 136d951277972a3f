"""Typed outputs. Encoders and classifiers reuse transformers' `BaseModelOutputWithPooling` and
`ImageClassifierOutput`; pretraining outputs are defined here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class MAEForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Mean squared error over the masked patches (of normalised pixels when `norm_pix_loss`).
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`):
            Predicted pixels of every patch, in grid order, flattened as (row, column, channel).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 for masked patches, 0 for visible ones.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            Permutation that restores grid order from [visible..., masked...].
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input then each encoder block's output, each `(batch_size, 1 + num_visible, hidden_size)`,
            when `output_hidden_states=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


__all__ = ["MAEForPreTrainingOutput"]
