"""Pictures for model cards, drawn with PIL alone."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

# Colour-blind-safe qualitative palette (Okabe & Ito), then a few more; masks beyond it cycle.
PALETTE = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (120, 120, 120),
    (160, 90, 40),
    (60, 60, 160),
]


def _to_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, C, H, W) normalised -> (B, H, W, 3) uint8; one channel is repeated to three."""
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return (pixels[:, :3] * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def mask_grid(
    images: torch.Tensor,
    masks: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    scale: int = 1,
):
    """A PIL image with one row per image: the image; its masks as a colour-coded partition over it (each pixel in
    the colour of its strongest mask, blended half and half); then each mask k as the image with what mask k
    occludes painted in mask k's colour, in proportion to the mask's value (as in ADIOS's figures).

    images: (B, C, H, W) normalised; masks: (B, N, H, W) in [0, 1]. `scale` enlarges small images (nearest)."""
    from PIL import Image

    if images.ndim != 4 or masks.ndim != 4 or masks.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected images (B, C, H, W) and masks (B, N, H, W), got {tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape[-2:])} and images {tuple(images.shape[-2:])} differ in size")
    rgb = _to_uint8(images, image_mean, image_std).float()  # (B, H, W, 3)
    m = masks.detach().float().cpu().clamp(0, 1)  # (B, N, H, W)
    batch, num, height, width = m.shape
    colours = torch.tensor([PALETTE[k % len(PALETTE)] for k in range(num)], dtype=torch.float32)  # (N, 3)
    partition = colours[m.argmax(dim=1)]  # (B, H, W, 3)
    panels = [rgb, 0.5 * rgb + 0.5 * partition]
    for k in range(num):
        alpha = m[:, k].unsqueeze(-1)
        panels.append((1 - alpha) * rgb + alpha * colours[k])
    grid = torch.cat([torch.cat(list(p), dim=0) for p in panels], dim=1)  # rows: images, columns: panels
    picture = Image.fromarray(grid.round().clamp(0, 255).to(torch.uint8).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


@torch.no_grad()
def save_adios_masks(model, pixel_values: torch.Tensor, path: str | os.PathLike, scale: int = 4) -> str:
    """Run an `ADIOSForPreTraining`'s occlusion model on `pixel_values` (normalised, the configured size) and write
    `mask_grid` of the result as a PNG. Returns the path."""
    was_training = model.training
    model.eval()
    try:
        masks = model.occlusion(pixel_values.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    picture = mask_grid(pixel_values, masks, model.config.image_mean, model.config.image_std, scale=scale)
    picture.save(path, format="PNG")
    return str(path)


__all__ = ["PALETTE", "mask_grid", "save_adios_masks"]
