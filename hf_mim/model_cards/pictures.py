"""Pictures for model cards: image grids drawn with PIL, the loss curve with matplotlib."""

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


def save_loss_curve(loss_history: Sequence[Sequence[float]], path: str | os.PathLike, title: str = "") -> str:
    """Plot [[step, loss], ...] (as `training_summary.json` records it) as a PNG. Returns the path."""
    if not loss_history:
        raise ValueError("loss_history is empty; there is no curve to draw")
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display on training machines
    from matplotlib.figure import Figure  # not pyplot: no global state, safe in threads and notebooks

    steps = [float(s) for s, _ in loss_history]
    losses = [float(v) for _, v in loss_history]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot(steps, losses, linewidth=1.2, color="#0072B2")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return str(path)


def reconstruction_grid(
    images: torch.Tensor,
    bool_masked_pos: torch.Tensor,
    reconstruction: torch.Tensor,
    patch_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    scale: int = 1,
):
    """A PIL image with one row per image: the image, the masked input (masked patches grey), the reconstruction,
    and the reconstruction with the visible patches pasted back.

    images, reconstruction: (B, C, H, W) normalised; bool_masked_pos: (B, L), True where a patch was masked."""
    from PIL import Image

    if reconstruction.shape != images.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and images {tuple(images.shape)} differ")
    batch, _, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    if bool_masked_pos.shape != (batch, rows * cols):
        raise ValueError(f"bool_masked_pos {tuple(bool_masked_pos.shape)} does not match a {rows}x{cols} patch grid")
    masked = bool_masked_pos.detach().cpu().bool().view(batch, 1, rows, cols)
    masked = masked.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    original = _to_uint8(images, image_mean, image_std).float()
    recon = _to_uint8(reconstruction, image_mean, image_std).float()
    pixel_mask = masked.permute(0, 2, 3, 1).float()  # (B, H, W, 1)
    grey = torch.full_like(original, 127.0)
    panels = [
        original,
        pixel_mask * grey + (1 - pixel_mask) * original,
        recon,
        pixel_mask * recon + (1 - pixel_mask) * original,
    ]
    grid = torch.cat([torch.cat(list(p), dim=0) for p in panels], dim=1)
    picture = Image.fromarray(grid.round().clamp(0, 255).to(torch.uint8).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


@torch.no_grad()
def reconstruct(model, pixel_values: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction (B, C, H, W) in the input's normalised scale, bool_masked_pos (B, L)) of a pixel-target
    pretraining model (MAE, R-MAE, SimMIM), with masks drawn from `seed`.

    Per-patch-normalised targets (`norm_pix_loss`) are de-normalised with each image's statistics over its visible
    patches, so reconstructions look like images (facebookresearch/mae#190)."""
    from ..modeling.backbone import patchify, unpatchify
    from ..modeling.losses import NORM_PIX_EPS

    config = model.config
    device = next(model.parameters()).device
    pixel_values = pixel_values.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            output = model(pixel_values)
    finally:
        model.train(was_training)
    patch = config.patch_size
    grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    if getattr(output, "reconstruction", None) is not None:  # SimMIM: the whole image, already in input scale
        return output.reconstruction.float(), output.bool_masked_pos.bool()
    if getattr(output, "logits", None) is None or getattr(output, "mask", None) is None:
        raise ValueError(f"{type(model).__name__} does not reconstruct pixels; no reconstruction picture")
    predicted = output.logits.float()  # (B, L, P*P*C)
    masked = output.mask.bool()
    if getattr(config, "norm_pix_loss", False):
        # The target is each patch minus its mean over its unbiased std (channels pooled). A masked patch's own
        # statistics are what the model had to guess, so each prediction is put back with the average mean and
        # average variance of the image's visible patches. Pooling all visible values instead would add the
        # between-patch variance and blow up the small per-patch contrasts (the colour offsets of dark patches).
        target = patchify(pixel_values.float(), patch)  # (B, L, P*P*C)
        visible = (~masked).float()  # (B, L)
        count = visible.sum(dim=1).clamp_min(1)
        mean = (target.mean(dim=-1) * visible).sum(dim=1) / count  # (B,)
        var = (target.var(dim=-1) * visible).sum(dim=1) / count
        predicted = predicted * (var[:, None, None] + NORM_PIX_EPS).sqrt() + mean[:, None, None]
    return unpatchify(predicted, patch, grid, config.num_channels), masked


def save_reconstructions(model, pixel_values: torch.Tensor, path: str | os.PathLike, scale: int = 4) -> str:
    """`reconstruct` then `reconstruction_grid`, written as a PNG. Returns the path."""
    reconstruction, masked = reconstruct(model, pixel_values)
    picture = reconstruction_grid(
        pixel_values,
        masked,
        reconstruction,
        model.config.patch_size,
        model.config.image_mean,
        model.config.image_std,
        scale=scale,
    )
    picture.save(path, format="PNG")
    return str(path)


def save_method_picture(model, pixel_values: torch.Tensor, folder: str | os.PathLike) -> str | None:
    """The picture a method has, written into `folder`: reconstructions for pixel-target methods (MAE, R-MAE,
    SimMIM), masks for ADIOS; None for methods without one (C-MAE, BEiT, the tokenizer). Returns the file name."""
    model_type = model.config.model_type
    if model_type == "hf_mim_adios":
        save_adios_masks(model, pixel_values, os.path.join(folder, "masks.png"))
        return "masks.png"
    if model_type in ("hf_mim_mae", "hf_mim_rmae", "hf_mim_simmim"):
        save_reconstructions(model, pixel_values, os.path.join(folder, "reconstruction.png"))
        return "reconstruction.png"
    return None


__all__ = [
    "PALETTE",
    "mask_grid",
    "reconstruct",
    "reconstruction_grid",
    "save_adios_masks",
    "save_loss_curve",
    "save_method_picture",
    "save_reconstructions",
]
