"""Pictures for model cards: image grids drawn with PIL, the loss curve with matplotlib."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import torch
from PIL import Image

from ..modeling.auto import SPECS_BY_MODEL_TYPE

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


@contextlib.contextmanager
def _picture_mode(model, seed: int):
    """The model in eval mode without gradients, and the global RNG seeded with `seed` and restored afterwards: a
    picture's draws are the same every time and leave the caller's RNG as it was. Yields the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            yield device
    finally:
        model.train(was_training)


def model_draws(model, method: str, pixel_values: torch.Tensor, seed: int = 0):
    """`model.<method>(pixel_values)`, what a picture kind draws (`PICTURE_KINDS`), under `_picture_mode`."""
    if not callable(getattr(model, method, None)):
        raise ValueError(f"{type(model).__name__} has no {method}(pixel_values): it cannot draw this picture")
    with _picture_mode(model, seed) as device:
        return getattr(model, method)(pixel_values.to(device))


def _to_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, C, H, W) normalised -> (B, H, W, 3) uint8; one channel is repeated to three."""
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return (pixels[:, :3] * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def panels_picture(panels: Sequence[torch.Tensor], scale: int = 1):
    """A PIL image from panels, each (B, H, W, 3) in 0-255: one row per image, one column per panel. `scale`
    enlarges small images (nearest neighbour, so patches stay sharp)."""
    grid = torch.cat([torch.cat(list(p), dim=0) for p in panels], dim=1)
    picture = Image.fromarray(grid.round().clamp(0, 255).to(torch.uint8).numpy())
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def token_colours(token_ids: torch.Tensor) -> torch.Tensor:
    """A colour per visual-token id, (..., 3) float in 0-255: hues spread by the golden ratio, so nearby ids look
    different and equal ids look the same in every picture."""
    hue = (token_ids.double() * 0.6180339887498949) % 1.0
    sector = (hue * 6).floor()
    frac = hue * 6 - sector
    value, saturation = 0.95, 0.65
    p = torch.full_like(hue, value * (1 - saturation))
    q, t = value * (1 - saturation * frac), value * (1 - saturation * (1 - frac))
    v = torch.full_like(hue, value)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    sector = sector.long() % 6
    rgb = torch.zeros(*hue.shape, 3, dtype=torch.float64)
    for k, (r, g, b) in enumerate(choices):
        where = sector == k
        rgb[where] = torch.stack([r, g, b], dim=-1)[where]
    return (rgb * 255).float()


def _grid_to_pixels(values: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(B, L, ...) per-patch values -> (B, H, W, ...) with every patch's value over its pixels."""
    rows, cols = grid
    values = values.reshape(values.shape[0], rows, cols, *values.shape[2:])
    return values.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)


def token_grid(
    images: torch.Tensor,
    token_ids: torch.Tensor,
    patch_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    bool_masked_pos: torch.Tensor | None = None,
    predicted_ids: torch.Tensor | None = None,
    decoded: Sequence[torch.Tensor] = (),
    decoded_mean: Sequence[float] | None = None,
    decoded_std: Sequence[float] | None = None,
    scale: int = 1,
):
    """A PIL image with one row per image: the image; with `bool_masked_pos`, the masked input (masked patches grey);
    the token map (each patch in its token's colour); with `predicted_ids`, the predicted map (masked patches in
    the predicted token's colour, visible ones as in the token map, a wrong prediction darkened); then each
    `decoded` image (B, C, H, W), normalised with `decoded_mean` / `decoded_std` (default: the images').

    images: (B, C, H, W) normalised; token_ids, predicted_ids: (B, L) on the patch grid; bool_masked_pos: (B, L)."""
    batch, _, height, width = images.shape
    grid = (height // patch_size, width // patch_size)
    if token_ids.shape != (batch, grid[0] * grid[1]):
        raise ValueError(f"token_ids {tuple(token_ids.shape)} do not match a {grid[0]}x{grid[1]} patch grid")
    original = _to_uint8(images, image_mean, image_std).float()
    panels = [original]
    token_map = _grid_to_pixels(token_colours(token_ids.cpu()), grid, patch_size)
    if bool_masked_pos is not None:
        pixel_mask = _grid_to_pixels(bool_masked_pos.cpu().bool().float()[..., None], grid, patch_size)
        panels.append(pixel_mask * 127.0 + (1 - pixel_mask) * original)
    panels.append(token_map)
    if predicted_ids is not None:
        masked = bool_masked_pos.cpu().bool() if bool_masked_pos is not None else torch.ones_like(token_ids, dtype=bool)
        shown = torch.where(masked, predicted_ids.cpu(), token_ids.cpu())
        wrong = (masked & (shown != token_ids.cpu())).float()
        colours = token_colours(shown) * (1 - 0.6 * wrong[..., None])
        panels.append(_grid_to_pixels(colours, grid, patch_size))
    for image in decoded:
        panels.append(_to_uint8(image, decoded_mean or image_mean, decoded_std or image_std).float())
    return panels_picture(panels, scale)


def save_token_picture(
    model, pixel_values: torch.Tensor, path: str | os.PathLike, seed: int = 0, scale: int = 4
) -> str:
    """`token_grid` of the model's `picture_tokens` (a `TokenMaps`: the token map and its decoding; BEiT adds the
    masked input and the predicted map), masks drawn from `seed`. Written as a PNG; returns the path."""
    maps = model_draws(model, "picture_tokens", pixel_values, seed)
    picture = token_grid(
        pixel_values,
        maps.token_ids,
        model.config.patch_size,
        model.config.image_mean,
        model.config.image_std,
        bool_masked_pos=maps.bool_masked_pos,
        predicted_ids=maps.predicted_ids,
        decoded=[d.float() for d in maps.decoded],
        decoded_mean=maps.image_mean,
        decoded_std=maps.image_std,
        scale=scale,
    )
    picture.save(path, format="PNG")
    return str(path)


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
    return panels_picture(panels, scale)


def save_masks_picture(model, pixel_values: torch.Tensor, path: str | os.PathLike, seed: int = 0, scale: int = 4):
    """`mask_grid` of the model's `picture_masks` (B, N, H, W) (an occlusion model's masks) on `pixel_values`
    (normalised, the configured size). Written as a PNG; returns the path."""
    masks = model_draws(model, "picture_masks", pixel_values, seed)
    picture = mask_grid(pixel_values, masks, model.config.image_mean, model.config.image_std, scale=scale)
    picture.save(path, format="PNG")
    return str(path)


def _step_plot():
    """(figure, axes) of a curve over optimizer steps."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display on training machines
    from matplotlib.figure import Figure  # not pyplot: no global state, safe in threads and notebooks

    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.set_xlabel("optimizer step")
    axes.grid(alpha=0.3)
    return figure, axes


def _save_plot(figure, axes, path: str | os.PathLike, title: str) -> str:
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return str(path)


@torch.no_grad()
def save_loss_curve(loss_history: Sequence[Sequence[float]], path: str | os.PathLike, title: str = "") -> str:
    """Plot [[step, loss], ...] (as `training_summary.json` records it) as a PNG. Returns the path."""
    if not loss_history:
        raise ValueError("loss_history is empty; there is no curve to draw")
    figure, axes = _step_plot()
    axes.plot([float(s) for s, _ in loss_history], [float(v) for _, v in loss_history], linewidth=1.2, color="#0072B2")
    axes.set_ylabel("training loss")
    return _save_plot(figure, axes, path, title)


def save_eval_curve(eval_history: Sequence, path: str | os.PathLike, title: str = "") -> str:
    """Plot the held-out probe's [[step, {"eval_knn_accuracy": %, "eval_reconstruction_error": ...}], ...] (as
    `training_summary.json` records it): the k-NN accuracy, and the reconstruction error on a second axis where it
    was measured. Returns the path."""
    if not eval_history:
        raise ValueError("eval_history is empty; there is no curve to draw")
    figure, axes = _step_plot()
    steps = [float(step) for step, _ in eval_history]
    axes.plot(steps, [logs["eval_knn_accuracy"] for _, logs in eval_history], marker="o", color="#009E73")
    axes.set_ylabel("held-out k-NN accuracy (%)", color="#009E73")
    errors = [logs.get("eval_reconstruction_error") for _, logs in eval_history]
    if all(error is not None for error in errors):
        second = axes.twinx()
        second.plot(steps, errors, marker="s", linestyle="--", color="#D55E00")
        second.set_ylabel("reconstruction error", color="#D55E00")
    return _save_plot(figure, axes, path, title)


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
    return panels_picture(panels, scale)


def reconstruct(model, pixel_values: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstruction (B, C, H, W) in the input's normalised scale, bool_masked_pos (B, L)) of a pixel-target
    pretraining model (its `reconstruct_pixels`: MAE, R-MAE, SimMIM), with masks drawn from `seed`. Per-patch
    normalised targets (`norm_pix_loss`) come back de-normalised, so reconstructions look like images
    (facebookresearch/mae#190)."""
    return model_draws(model, "reconstruct_pixels", pixel_values, seed)


@torch.no_grad()
def reconstruction_error(model, pixel_values: torch.Tensor, seed: int = 0, batch_size: int = 256) -> dict:
    """How well a pixel-target model (MAE, R-MAE, SimMIM) fills in what it cannot see: the mean squared error over
    the masked pixels of `reconstruct`'s output (de-normalised as the picture shows it), divided by the variance of
    all pixels of the images. 1 is what predicting the images' mean colour scores, 0 a perfect reconstruction.

    Returns {"masked_mse": ..., "pixel_variance": ..., "ratio": ..., "images": N}; masks are drawn from `seed`."""
    errors, counts = [], []
    for start in range(0, len(pixel_values), batch_size):
        images = pixel_values[start : start + batch_size]
        reconstruction, masked = reconstruct(model, images, seed + start)
        patch = model.config.patch_size
        rows, cols = images.shape[-2] // patch, images.shape[-1] // patch
        pixel_mask = masked.view(-1, 1, rows, cols).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
        pixel_mask = pixel_mask.expand_as(images).to(reconstruction.device)
        squared = (reconstruction.float() - images.to(reconstruction.device).float()) ** 2
        errors.append(squared[pixel_mask].sum().double())
        counts.append(pixel_mask.sum())
    masked_mse = float(sum(errors) / sum(counts))
    variance = float(pixel_values.double().var())
    return {
        "masked_mse": masked_mse,
        "pixel_variance": variance,
        "ratio": masked_mse / variance,
        "images": len(pixel_values),
    }


def save_reconstructions(
    model, pixel_values: torch.Tensor, path: str | os.PathLike, scale: int = 4, seed: int = 0
) -> str:
    """`reconstruct` then `reconstruction_grid`, written as a PNG. Returns the path."""
    reconstruction, masked = reconstruct(model, pixel_values, seed)
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


def save_model_panels(model, pixel_values: torch.Tensor, path: str | os.PathLike, seed: int = 0, scale: int = 4):
    """A method's own picture: the columns `model.picture_panels(pixel_values)` returns, each (B, C, H, W) in
    [0, 1] (one channel is shown grey). Written as a PNG; returns the path."""
    columns = []
    for panel in model_draws(model, "picture_panels", pixel_values, seed):
        panel = panel.detach().float().cpu().clamp(0, 1)
        panel = panel.expand(-1, 3, -1, -1) if panel.shape[1] == 1 else panel[:, :3]
        columns.append((panel * 255).permute(0, 2, 3, 1))
    panels_picture(columns, scale).save(path)
    return str(path)


# its name before masks became any model's `picture_masks` (issue 29), kept for callers
save_adios_masks = save_masks_picture

#: `Picture.kind` -> how it is drawn: draw(model, pixel_values, path, seed, scale). Each kind draws what one method of
#: the model gives (`Picture`'s docstring): "reconstruction" `reconstruct_pixels`, "masks" `picture_masks`, "tokens"
#: `picture_tokens`, "panels" `picture_panels`.
PICTURE_KINDS = {
    "reconstruction": lambda model, x, path, seed, scale: save_reconstructions(model, x, path, scale=scale, seed=seed),
    "masks": save_masks_picture,
    "tokens": save_token_picture,
    "panels": save_model_panels,
}


def save_method_pictures(
    model, pixel_values: torch.Tensor, folder: str | os.PathLike, seed: int = 0, scale: int = 4
) -> list[str]:
    """The pictures the model's method declares for its config (`MethodSpec.pictures`), written into `folder`; none
    for a method without one (C-MAE, whose targets are features, not pixels). Returns the file names."""
    spec = SPECS_BY_MODEL_TYPE.get(model.config.model_type)
    pictures = spec.pictures(model.config) if spec is not None else ()
    for picture in pictures:
        PICTURE_KINDS[picture.kind](model, pixel_values, os.path.join(folder, picture.file), seed, scale)
    return [picture.file for picture in pictures]


__all__ = [
    "PALETTE",
    "PICTURE_KINDS",
    "mask_grid",
    "panels_picture",
    "save_token_picture",
    "token_colours",
    "token_grid",
    "reconstruct",
    "reconstruction_error",
    "reconstruction_grid",
    "save_adios_masks",
    "save_masks_picture",
    "model_draws",
    "save_eval_curve",
    "save_loss_curve",
    "save_method_pictures",
    "save_model_panels",
    "save_reconstructions",
]
