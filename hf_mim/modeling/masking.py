"""Masking as pure functions over the patch grid.

Conventions used across hf_mim: a mask is (B, L) with 1 (or True) for a masked patch and 0 for a visible one,
patches numbered row-major over the grid. Functions draw their randomness from an explicit `noise` tensor or
`generator`, so a seed reproduces a mask exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RandomMasking:
    """Result of `random_masking`.

    ids_keep: (B, K) indices of the visible patches, in the order the encoder sees them.
    ids_restore: (B, L) permutation that puts [visible..., masked...] back into grid order.
    mask: (B, L) float, 0 is keep, 1 is remove.
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def num_visible_patches(num_patches: int, mask_ratio: float) -> int:
    """Patches MAE keeps visible: `int(L * (1 - mask_ratio))`, rounding down like MAE and transformers."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> RandomMasking:
    """MAE's per-sample uniform masking: the `L - int(L * (1 - mask_ratio))` patches with the highest noise are masked.

    `noise` (B, L) has the meaning of transformers' ViTMAE `noise` argument: patches are sorted by ascending noise
    and the lowest are kept. Without it, noise is drawn from `generator` (or the global RNG).
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio!r} is invalid: must lie strictly between 0 and 1")
    if noise is None:
        noise = torch.rand(batch_size, num_patches, generator=generator, device=device)
    elif tuple(noise.shape) != (batch_size, num_patches):
        raise ValueError(
            f"noise must have shape (batch, num_patches) = {(batch_size, num_patches)}, got {tuple(noise.shape)}"
        )
    len_keep = num_visible_patches(num_patches, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    # A patch is masked exactly when its rank in the shuffle falls beyond the kept prefix.
    mask = (ids_restore >= len_keep).to(torch.float32)
    return RandomMasking(ids_keep=ids_shuffle[:, :len_keep], ids_restore=ids_restore, mask=mask)


__all__ = ["RandomMasking", "random_masking", "num_visible_patches"]
