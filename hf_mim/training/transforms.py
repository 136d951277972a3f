"""Image decoding and MAE's augmentation, with PIL and torch only (no torchvision).

Every random choice takes an explicit `torch.Generator`; the data pipeline seeds one per sample from
(seed, epoch, index), so augmentations do not depend on worker count, world size or where a run was resumed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

# Pillow's default bomb guard raises only at twice this; a pretraining set has no business near it.
Image.MAX_IMAGE_PIXELS = 178_956_970


def open_image(value) -> Image.Image:
    """A PIL image from what a `datasets` Image column (decode=False) or a user holds: PIL image, dict with
    bytes/path, raw bytes, or a path. Fully decoded here, so truncated files fail here, not later."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("empty image entry (no bytes, no path)")
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, str):
        image = Image.open(value)
    else:
        raise ValueError(f"cannot read an image from {type(value).__name__}")
    image.load()
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale ('I;16', 'I', 'F') stretched to 8 bits over its own range."""
    array = np.asarray(image, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def to_channels(image: Image.Image, num_channels: int) -> Image.Image:
    """Any PIL mode, EXIF orientation applied, as an image of `num_channels` channels (1: L, 3: RGB, 4: RGBA;
    other counts come from RGB by `pil_to_tensor`). Transparency is composited on white, not dropped to black."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if num_channels == 4:
        return image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if num_channels == 1:
        return image.convert("L")
    return image.convert("RGB")


def random_resized_crop_box(
    width: int,
    height: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, drawn from `generator`: (left, top, crop_width, crop_height)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    # Fallback: the central crop at the nearest allowed aspect ratio (tiny and thin images end up here).
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, max(1, int(round(width / min(ratio))))
    elif in_ratio > max(ratio):
        w, h = max(1, int(round(height * max(ratio)))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def pil_to_tensor(image: Image.Image, num_channels: int) -> torch.Tensor:
    """(C, H, W) float in [0, 1]. For channel counts PIL has no mode for, RGB channels are cycled."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if tensor.shape[0] != num_channels:
        tensor = tensor[[i % tensor.shape[0] for i in range(num_channels)]]
    return tensor


class ImageTransform:
    """Training augmentation of MAE: random resized crop (scale 0.2-1, bicubic), horizontal flip, normalisation.
    With `train=False`: resize to the model size and normalise only."""

    def __init__(
        self,
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        num_channels: int = 3,
        scale: tuple[float, float] = (0.2, 1.0),
        train: bool = True,
    ):
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.num_channels = num_channels
        self.scale = scale
        self.train = train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        image = to_channels(image, self.num_channels)
        height, width = self.size
        if self.train:
            left, top, w, h = random_resized_crop_box(image.width, image.height, generator, self.scale)
            image = image.resize((width, height), Image.BICUBIC, box=(left, top, left + w, top + h))
            if float(torch.rand(1, generator=generator)) < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            image = image.resize((width, height), Image.BICUBIC)
        return (pil_to_tensor(image, self.num_channels) - self.mean) / self.std


__all__ = ["ImageTransform", "open_image", "to_channels", "random_resized_crop_box", "pil_to_tensor"]
