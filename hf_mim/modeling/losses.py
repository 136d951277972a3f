"""Losses shared across methods."""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def normalize_patches(patches: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """MAE's normalised-pixel target: each patch minus its mean, over sqrt(unbiased variance + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the patches where `mask` is 1.

    pred, target: (B, L, P); mask: (B, L) with 1 for patches that count. Computed in float32 whatever the inputs,
    so that bf16/fp16 reconstructions do not lose the loss to rounding.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


def masked_pixel_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, bool_masked_pos: torch.Tensor, patch_size: int, eps: float = 1e-5
) -> torch.Tensor:
    """SimMIM's loss: L1 between (B, C, H, W) images, averaged over the pixels (and channels) of masked patches.

    `bool_masked_pos` (B, rows * cols) is upsampled to pixels; the normaliser is
    `(masked pixels + eps) * channels`, exactly as SimMIM and transformers' `ViTForMaskedImageModeling` compute it.
    """
    batch, channels, height, width = target.shape
    rows, cols = height // patch_size, width // patch_size
    mask = bool_masked_pos.reshape(batch, rows, cols).repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    mask = mask.unsqueeze(1).to(torch.float32)
    per_pixel = torch.nn.functional.l1_loss(pred.float(), target.float(), reduction="none")
    return (per_pixel * mask).sum() / (mask.sum() + eps) / channels


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, L, V) logits against (B, L) ids on the masked positions only (BEiT), in float32."""
    mask = bool_masked_pos.bool()
    return torch.nn.functional.cross_entropy(logits[mask].float(), labels[mask])


NEGATIVES = ("batch", "positions")


def token_info_nce(
    queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.2, negatives: str = "batch"
) -> torch.Tensor:
    """Token-wise InfoNCE between (B, L, P) queries and keys; the positive of query (b, i) is key (b, i).

    `negatives="batch"`: the candidates of (b, i) are the keys at position i of every image of the (local) batch;
    `negatives="positions"`: the keys at every position of image b. Cosine similarities over `temperature`,
    cross-entropy averaged over all B * L queries, in float32.
    """
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    if negatives == "batch":
        logits = torch.einsum("bip,cip->ibc", q, k) / temperature  # (L, B, B): position, query image, key image
    elif negatives == "positions":
        logits = torch.einsum("bip,bjp->bij", q, k) / temperature  # (B, L, L): image, query position, key position
    else:
        raise ValueError(f"negatives={negatives!r} is invalid: one of {NEGATIVES}")
    targets = torch.arange(logits.shape[-1], device=logits.device).expand(logits.shape[:-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def byol_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE, 2 - 2 cos(p, z), averaged over every leading position, in float32."""
    p = torch.nn.functional.normalize(predictions.float(), dim=-1)
    z = torch.nn.functional.normalize(targets.float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


__all__ = [
    "masked_mse_loss",
    "masked_pixel_l1_loss",
    "masked_cross_entropy",
    "normalize_patches",
    "token_info_nce",
    "byol_loss",
    "NEGATIVES",
    "NORM_PIX_EPS",
]
