"""Colour jitter on tensors, for methods that build their views inside the model (C-MAE, ADIOS): brightness, contrast,
saturation and hue, per image, with the factors as inputs so that a seed reproduces them.

Images are (B, C, H, W) in [0, 1]. Factors are (B, 4): brightness, contrast and saturation multipliers (1 = no
change) and a hue shift in turns (0 = no change), applied in that fixed order (torchvision draws the order at
random). Saturation and hue need RGB; for other channel counts they are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .backbone import channel_column, config_error

IDENTITY = (1.0, 1.0, 1.0, 0.0)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    r, g, b = images.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(1)
    maxc, _ = images.max(dim=1)
    minc, _ = images.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack([hue, saturation, maxc], dim=1)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    h, s, v = images.unbind(1)
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(images)
    for k, (r, g, b) in enumerate(choices):
        where = (i == k).unsqueeze(1)
        out = torch.where(where, torch.stack([r, g, b], dim=1), out)
    return out


def color_jitter(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Apply per-image (B, 4) factors to (B, C, H, W) images in [0, 1]; the result is clamped to [0, 1]."""
    if factors.shape != (images.shape[0], 4):
        raise ValueError(f"factors must have shape (batch, 4) = {(images.shape[0], 4)}, got {tuple(factors.shape)}")
    f = factors.to(images.dtype).view(-1, 4, 1, 1)
    out = (images * f[:, 0:1]).clamp(0, 1)
    mean = _grayscale(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * f[:, 1:2] + mean).clamp(0, 1)
    if images.shape[1] == 3:
        gray = _grayscale(out)
        out = ((out - gray) * f[:, 2:3] + gray).clamp(0, 1)
        hsv = rgb_to_hsv(out)
        hsv = torch.cat([(hsv[:, :1] + f[:, 3:4]) % 1.0, hsv[:, 1:]], dim=1)
        out = hsv_to_rgb(hsv)
    return out


def sample_color_jitter(
    generator: torch.Generator | None = None, strength: Sequence[float] = (0.4, 0.4, 0.4, 0.1), prob: float = 0.8
) -> torch.Tensor:
    """(4,) factors: with probability `prob`, brightness/contrast/saturation uniform in [1 - s, 1 + s] and hue shift
    uniform in [-h, h] (SimCLR / BYOL's ranges by default); otherwise the identity."""
    draws = torch.rand(5, generator=generator, dtype=torch.float64)
    if draws[0] >= prob:
        return torch.tensor(IDENTITY)
    b, c, s, h = strength
    u = draws[1:] * 2 - 1
    return torch.tensor([1 + b * u[0], 1 + c * u[1], 1 + s * u[2], h * u[3]], dtype=torch.float32)


class ColorJitterFields:
    r"""
    The colour-jitter config fields of models that make two jittered views of each image themselves, declared here
    once; each config gives its own defaults in its signature and passes the values to `set_color_jitter_fields`.

    Args:
        color_jitter_strength (`list[float]`, *optional*):
            Brightness, contrast, saturation and hue ranges of each view's colour jitter (factors uniform in
            [1 - s, 1 + s], hue shift in [-h, h]).
        color_jitter_prob (`float`, *optional*, defaults to 0.8):
            Probability that a view is jittered at all.
    """

    def set_color_jitter_fields(self, color_jitter_strength: Sequence[float], color_jitter_prob: float) -> None:
        self.color_jitter_strength = [float(v) for v in color_jitter_strength]
        self.color_jitter_prob = color_jitter_prob


def validate_color_jitter_fields(config) -> None:
    """`color_jitter_strength` (four non-negative floats) and `color_jitter_prob` (in [0, 1]) of a two-view config."""
    if not 0.0 <= config.color_jitter_prob <= 1.0:
        raise config_error("color_jitter_prob", config.color_jitter_prob, "a float in [0, 1]")
    if len(config.color_jitter_strength) != 4 or any(s < 0 for s in config.color_jitter_strength):
        raise config_error(
            "color_jitter_strength", config.color_jitter_strength, "four non-negative floats (b, c, s, hue)"
        )


def sample_view_jitter(generator: torch.Generator | None, config, views: int = 2) -> torch.Tensor:
    """(views, 4) factors for one image, from the config's `color_jitter_strength` and `color_jitter_prob`."""
    strength, prob = config.color_jitter_strength, config.color_jitter_prob
    return torch.stack([sample_color_jitter(generator, strength, prob) for _ in range(views)])


class TwoViewsMixin:
    """For pretraining models that make two colour-jittered views of each image themselves (C-MAE, ADIOS): the
    config has `image_mean`, `image_std`, `color_jitter_strength` and `color_jitter_prob`."""

    def make_views(self, pixel_values: torch.Tensor, jitter: torch.Tensor) -> list[torch.Tensor]:
        """Two colour-jittered copies of normalised images; jitter (B, 2, 4) as `color_jitter` factors."""
        mean = channel_column(self.config.image_mean, pixel_values)
        std = channel_column(self.config.image_std, pixel_values)
        images = (pixel_values * std + mean).clamp(0, 1)
        return [(color_jitter(images, jitter[:, v]) - mean) / std for v in range(2)]

    def draw_view_jitter(self, batch: int, device) -> torch.Tensor:
        """(B, 2, 4) factors from the global RNG (the data pipeline passes its own, drawn per sample)."""
        return torch.stack([sample_view_jitter(None, self.config) for _ in range(batch)]).to(device)


__all__ = [
    "ColorJitterFields",
    "color_jitter",
    "sample_color_jitter",
    "sample_view_jitter",
    "validate_color_jitter_fields",
    "TwoViewsMixin",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "IDENTITY",
]
