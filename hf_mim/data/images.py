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

#: The most pixels an image may declare (10,000 x 10,000), checked from its header before it is decoded: a 219 kB PNG
#: can declare 15,000 x 15,000 and decode to gigabytes. Pillow's own guard only warns below twice its
#: `MAX_IMAGE_PIXELS` (179 million pixels); Pillow's global setting is left as it is for the user's code.
MAX_PIXELS = 100_000_000


def open_image(value, load: bool = True) -> Image.Image:
    """A PIL image from what a `datasets` Image column (decode=False) or a user holds: PIL image, dict with
    bytes/path, raw bytes, or a path. Fully decoded here, so truncated files fail here, not later; with
    `load=False` only its header is read, and `ImageAugmentation` decodes it (at a reduced scale where it may)."""
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
    if image.width * image.height > MAX_PIXELS:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} pixels, more than hf_mim's limit of {MAX_PIXELS:,} (a decompression bomb?)"
        )
    if load:
        image.load()
    return image


# EXIF orientations that swap width and height (transposed, rotated by 90 or 270 degrees)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, after the EXIF orientation `to_channels` applies; from the header alone."""
    orientation = image.getexif().get(0x0112, 1)
    return (image.height, image.width) if orientation in _SWAPPING_ORIENTATIONS else image.size


def draft_for_crop(image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]):
    """JPEG draft mode: decode a still undecoded JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, several
    times faster) when the crop `box` (left, top, width, height) keeps at least `size` (width, height) pixels at that
    scale; returns the box in the reduced image's coordinates, as floats. Other images, images with an EXIF
    rotation, and crops smaller than twice the output are left alone."""
    left, top, w, h = box
    out_w, out_h = size
    if image.format != "JPEG" or not getattr(image, "tile", None) or w < 2 * out_w or h < 2 * out_h:
        return (left, top, left + w, top + h)
    if image.getexif().get(0x0112, 1) != 1:
        return (left, top, left + w, top + h)
    full_w, full_h = image.size
    # the smallest image whose crop still has the output's size: PIL picks the largest scale that is not smaller
    image.draft(None, (math.ceil(full_w * out_w / w), math.ceil(full_h * out_h / h)))
    sx, sy = full_w / image.width, full_h / image.height
    return (left / sx, top / sy, (left + w) / sx, (top + h) / sy)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale ('I;16', 'I', 'F') stretched to 8 bits over its own range."""
    array = np.asarray(image, dtype=np.float64)
    if not np.isfinite(array).all():
        # one NaN makes the range NaN, and the image would train as all black
        raise ValueError(f"{int((~np.isfinite(array)).sum())} pixels are NaN or infinite")
    low, high = float(array.min()), float(array.max())
    scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def to_channels(image: Image.Image, num_channels: int) -> Image.Image:
    """Any PIL mode, EXIF orientation applied, as an image of `num_channels` channels (1: L, 3: RGB, 4: RGBA;
    no other count has a defined conversion, `check_image_channels`). Transparency is composited on white, not
    dropped to black."""
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


#: Channel counts an image file converts to: greyscale, RGB, RGBA. Others (2, 13) have no defined mapping.
IMAGE_CHANNELS = (1, 3, 4)


def check_image_channels(num_channels, field: str = "num_channels") -> None:
    """Refuse a channel count that decoded images have no defined conversion to (filling 13 channels by cycling
    RGB would train on made-up bands)."""
    if num_channels not in IMAGE_CHANNELS:
        raise ValueError(
            f"{field}={num_channels!r} is invalid for images decoded from files: allowed {IMAGE_CHANNELS} (greyscale, "
            "RGB, RGBA); for other bands, give the model pixel_values of that many channels yourself"
        )


def pil_to_uint8(image: Image.Image, num_channels: int) -> torch.Tensor:
    """(C, H, W) uint8 of an image `to_channels` converted to `num_channels` (1, 3 or 4; `ImageAugmentation`
    checks the count once, not per image)."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if tensor.shape[0] != num_channels:
        raise ValueError(f"an image of {tensor.shape[0]} channels where {num_channels} were asked for")
    return tensor


def pil_to_tensor(image: Image.Image, num_channels: int) -> torch.Tensor:
    """(C, H, W) float in [0, 1] of an image of 1, 3 or 4 channels (`pil_to_uint8`)."""
    return pil_to_uint8(image, num_channels).float() / 255.0


def normalize_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as the model takes them: x / 255, then (x - mean) / std, with mean and std of shape (C, 1, 1)."""
    return (pixels.float() / 255.0 - mean) / std


class ImageAugmentation:
    """One image's augmentation, MAE's: random resized crop (scale 0.2-1, bicubic), horizontal flip, normalisation,
    every draw from the `generator` it is given. With `train=False`: resize to the model size and normalise only.

    `jpeg_draft` (default True): a JPEG still undecoded when it gets here (`open_image(value, load=False)`, as the
    training pipelines open files) is decoded by libjpeg at 1/2, 1/4 or 1/8 scale when its crop keeps at least the
    output's resolution there (`draft_for_crop`). The crop, flip and every draw are the same; the pixels differ
    from a full-scale decode by the difference between DCT-domain and bicubic downscaling (2.2/255 on average on
    1024x768 photos; benchmarks/RESULTS.md). Decoded images (PIL images a user passes, evaluation) are never
    drafted."""

    def __init__(
        self,
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        num_channels: int = 3,
        scale: tuple[float, float] = (0.2, 1.0),
        train: bool = True,
        jpeg_draft: bool = True,
    ):
        check_image_channels(num_channels)
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.jpeg_draft = jpeg_draft
        self.num_channels = num_channels
        self.scale = scale
        self.train = train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @classmethod
    def from_config(cls, config, train: bool = False, scale: tuple[float, float] = (0.2, 1.0)) -> ImageAugmentation:
        """For a model config: its image size, channels and normalisation (`image_mean`, `image_std`)."""
        return cls(config.image_size, config.image_mean, config.image_std, config.num_channels, tuple(scale), train)

    def __call__(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """(C, H, W) float: the crop, normalised."""
        return self.normalize(self.crop(image, generator))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (C, H, W) or (B, C, H, W), on any device, as the model takes them: x / 255, then the
        config's mean and std. `hf-mim pretrain` ships uint8 crops from its workers and normalises on the device:
        a quarter of the bytes through the workers' shared memory."""
        return normalize_pixels(pixels, self.mean.to(pixels.device), self.std.to(pixels.device))

    def crop(self, image: Image.Image, generator: torch.Generator) -> torch.Tensor:
        """(C, H, W) uint8: decoded, cropped (train) or resized, and flipped (train), not normalised."""
        height, width = self.size
        shown_w, shown_h = displayed_size(image)
        if self.train:
            box = random_resized_crop_box(shown_w, shown_h, generator, self.scale)
        else:
            box = (0, 0, shown_w, shown_h)
        if self.jpeg_draft:
            box = draft_for_crop(image, box, (width, height))
        else:
            box = (box[0], box[1], box[0] + box[2], box[1] + box[3])
        image = to_channels(image, self.num_channels)  # decodes (at the draft's scale)
        image = image.resize((width, height), Image.BICUBIC, box=box)
        if self.train and float(torch.rand(1, generator=generator)) < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_uint8(image, self.num_channels)


__all__ = [
    "IMAGE_CHANNELS",
    "ImageAugmentation",
    "check_image_channels",
    "displayed_size",
    "draft_for_crop",
    "normalize_pixels",
    "open_image",
    "pil_to_tensor",
    "pil_to_uint8",
    "random_resized_crop_box",
    "to_channels",
]
