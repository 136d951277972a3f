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


__all__ = ["masked_mse_loss", "normalize_patches", "NORM_PIX_EPS"]
