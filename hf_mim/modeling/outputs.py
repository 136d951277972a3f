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


@dataclass
class CMAEForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            The symmetrised token-wise loss (InfoNCE or BYOL) between online predictions and target projections.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, 2, num_patches)`):
            Each view's mask, True for masked patches.
        color_jitter (`torch.FloatTensor` of shape `(batch_size, 2, 4)`):
            Each view's colour-jitter factors.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The online encoder's hidden states for the first view.
    """

    loss: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    color_jitter: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RMAEForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            `consistency_loss + autoencoding_weight * autoencoding_loss`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`):
            The masked view's reconstruction g(f(x masked)), as MAE's `logits`.
        full_logits (`torch.FloatTensor` of the same shape):
            The full image's reconstruction g(f(x)).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 for masked patches, 0 for visible ones.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            As MAE's.
        consistency_loss (`torch.FloatTensor` of shape `()`):
            MSE between the two reconstructions on the masked patches.
        autoencoding_loss (`torch.FloatTensor` of shape `()`):
            MSE between the full reconstruction and the (normalised, with `norm_pix_loss`) pixels, over all patches.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The masked view's encoder hidden states.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    full_logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    consistency_loss: torch.FloatTensor | None = None
    autoencoding_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SimMIMForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            L1 loss over the pixels of the masked patches.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Predicted pixels of the whole image (in the normalised space of `pixel_values`), transformers'
            `MaskedImageModelingOutput.reconstruction`.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
            The mask used, True for masked patches (drawn by the model when not given).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input then each block's output, each `(batch_size, 1 + num_patches, hidden_size)`.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BEiTForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Cross-entropy of the predicted visual tokens at the masked positions.
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, vocab_size)`):
            Token scores at every patch position (only masked ones enter the loss).
        labels (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            The visual-token ids of every patch: given, or computed by the frozen tokenizer.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
            The mask used, True for masked patches.
        accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of masked positions whose most likely token is the label.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input then each block's output.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    accuracy: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class VisualTokenizerOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Training loss: `reconstruction_loss + quantization_loss`.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Decoded images, in the normalised space of `pixel_values`.
        token_ids (`torch.LongTensor` of shape `(batch_size, rows, cols)`):
            The discrete code of every patch, on the ViT patch grid.
        reconstruction_loss (`torch.FloatTensor` of shape `()`):
            Mean squared error between `reconstruction` and `pixel_values`.
        quantization_loss (`torch.FloatTensor` of shape `()`):
            VQ: commitment loss (`commitment_cost` * ||z - sg(e)||^2). Gumbel: `kl_weight` * KL(q || uniform).
        perplexity (`torch.FloatTensor` of shape `()`):
            exp(entropy) of the batch's code histogram (across processes when distributed): how many codes are in
            effective use, between 1 and `vocab_size`.
        codebook_usage (`torch.FloatTensor` of shape `()`):
            Fraction of the vocabulary the batch used (across processes when distributed).
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    token_ids: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None


@dataclass
class ADIOSForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            What the phase asked for minimises: `phase="encoder"`, the similarity loss (masks detached);
            `phase="occlusion"`, `mask_penalty - similarity_loss` (the occlusion model's side of the min-max);
            `phase=None`, `similarity_loss + mask_penalty` with the masks behind a gradient reversal (one optimizer).
        similarity_loss (`torch.FloatTensor` of shape `()`):
            The objective (SimCLR, BYOL or SimSiam) between the first view and the masked second view, summed over
            the masks (or taken for each image's chosen mask, ADIOS-s).
        mask_penalty (`torch.FloatTensor` of shape `()`):
            `sparsity_weight * sum_k mean_b 1 / (sin(pi * area_bk) + sparsity_eps)`, in float32.
        masks (`torch.FloatTensor` of shape `(batch_size, num_masks, height, width)`):
            The occlusion model's masks of the second view; they sum to 1 at every pixel.
        color_jitter (`torch.FloatTensor` of shape `(batch_size, 2, 4)`):
            Each view's colour-jitter factors.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The encoder's hidden states for the first (unmasked) view.
    """

    loss: torch.FloatTensor | None = None
    similarity_loss: torch.FloatTensor | None = None
    mask_penalty: torch.FloatTensor | None = None
    masks: torch.FloatTensor | None = None
    color_jitter: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


__all__ = [
    "MAEForPreTrainingOutput",
    "RMAEForPreTrainingOutput",
    "SimMIMForPreTrainingOutput",
    "BEiTForPreTrainingOutput",
    "VisualTokenizerOutput",
    "ADIOSForPreTrainingOutput",
]
