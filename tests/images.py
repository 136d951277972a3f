"""Image files of every awkward kind, written on demand (nothing is downloaded)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

GOOD = [
    "rgb.jpg",
    "grey_L.png",
    "grey_alpha_LA.png",
    "palette_P.png",
    "palette_transparent_P.png",
    "rgba.png",
    "cmyk.jpg",
    "sixteen_bit_I16.png",
    "exif_rotated.jpg",
    "tiny_2x2.png",
    "thin_3x500.png",
]
BAD = ["truncated.jpg", "empty.png", "not_an_image.jpg", "random_bytes.png"]


def exif_rotated_jpeg(width: int = 20, height: int = 10) -> bytes:
    """JPEG bytes of a width x height image whose EXIF says: rotate 90 degrees to display (orientation 6)."""
    image = Image.new("RGB", (width, height), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, width // 2, height))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def exif_rotated(width: int = 20, height: int = 10) -> Image.Image:
    return Image.open(io.BytesIO(exif_rotated_jpeg(width, height)))


def make_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    sixteen = Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16))
    if sixteen.mode != "I;16":
        sixteen = sixteen.convert("I;16")
    return {
        "rgb.jpg": rgb,
        "grey_L.png": rgb.convert("L"),
        "grey_alpha_LA.png": rgb.convert("LA"),
        "palette_P.png": palette,
        "palette_transparent_P.png": transparent,
        "rgba.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "sixteen_bit_I16.png": sixteen,
        "exif_rotated.jpg": exif_rotated(),
        "tiny_2x2.png": Image.fromarray(rng.integers(0, 255, (2, 2, 3), dtype=np.uint8)),
        "thin_3x500.png": Image.fromarray(rng.integers(0, 255, (500, 3, 3), dtype=np.uint8)),
    }


def write_image_folder(folder: Path, with_bad: bool = True, copies: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in make_images().items():
        for c in range(copies):
            target = folder / (name if c == 0 else f"copy{c}_{name}")
            if name == "exif_rotated.jpg":
                target.write_bytes(exif_rotated_jpeg())  # re-saving through PIL would drop the EXIF tag
            else:
                image.save(target)
    if with_bad:
        good_jpeg = (folder / "rgb.jpg").read_bytes()
        (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
        (folder / "empty.png").write_bytes(b"")
        (folder / "not_an_image.jpg").write_text("this is a text file with an image suffix\n")
        (folder / "random_bytes.png").write_bytes(np.random.default_rng(1).bytes(300))
    return folder


def write_webdataset(folder: Path, shards: int, per_shard: int, bad: tuple[str, ...] = (), size=(20, 24)) -> list[str]:
    """WebDataset tar shards `train-000.tar`, ... of `per_shard` samples each: `KEY.jpg` (random RGB JPEG) and
    `KEY.cls`. Keys named in `bad` get bytes that are no image. Returns every key, in writing order."""
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    keys = []
    for shard in range(shards):
        with tarfile.open(folder / f"train-{shard:03d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"s{shard}_{i:04d}"
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "JPEG")
                image = b"not a jpeg" if key in bad else buffer.getvalue()
                for name, data in ((f"{key}.jpg", image), (f"{key}.cls", str(i % 3).encode())):
                    entry = tarfile.TarInfo(name)
                    entry.size = len(data)
                    tar.addfile(entry, io.BytesIO(data))
                keys.append(key)
    return keys
