"""`hf-mim visualize`: pictures of what a pretrained model does with images it is given.

Each method's pictures are those its `MethodSpec.pictures(config)` declares. MAE, R-MAE and SimMIM: reconstruction.png
(image, masked input, reconstruction, reconstruction with the visible patches pasted back; normalised-pixel targets
de-normalised with the visible patches' statistics). ADIOS: masks.png (the occlusion model's masks, colour-coded).
BEiT: tokens.png (the tokenizer's token map, the predicted tokens and both decoded); a visual tokenizer: tokens.png
(token map and decoding). MAE with learned masks also: learned_masks.png (the mask model's scores, a learned mask
and a random mask). The model card shows the same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .. import modeling  # noqa: F401  (registers hf_mim's classes with the Auto classes)
from ..data.images import ImageAugmentation
from ..data.pipeline import SamplePipeline
from ..data.sources import find_image_column, load_pretraining_dataset
from ..loading import load_checked
from ..model_cards.pictures import save_method_pictures
from ..modeling.auto import SPECS_BY_MODEL_TYPE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class VisualizeArguments:
    """What `hf-mim visualize` takes; the CLI is generated from these fields, their defaults and their help."""

    model: str = field(metadata={"help": "an hf_mim pretraining checkpoint", "metavar": "PATH_OR_REPO"})
    images: list[str] | None = field(
        default=None,
        metadata={"help": "image files or folders (default: the first images of --dataset)", "metavar": "PATH"},
    )
    dataset: str | None = field(
        default=None, metadata={"help": "dataset to take images from when --images is not given (default: digits)"}
    )
    num_images: int = field(default=8, metadata={"help": "images, one row each (default: %(default)s)"})
    mask_ratio: float | None = field(default=None, metadata={"help": "override the checkpoint's mask ratio"})
    seed: int = field(default=0, metadata={"help": "seed of the masks (default: %(default)s)"})
    scale: int = field(default=4, metadata={"help": "enlarge small images this many times (default: %(default)s)"})
    output_dir: str = field(default="outputs/visualize", metadata={"help": "where the PNG goes (default: %(default)s)"})


def load_pretraining_model(name_or_path: str | os.PathLike, **config_overrides):
    """The full pretraining model of an hf_mim checkpoint (decoder, heads, tokenizer), in eval mode."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False, **config_overrides)
    spec = SPECS_BY_MODEL_TYPE.get(config.model_type)
    if spec is None or spec.picture is None:
        pictured = sorted(s.name for s in SPECS_BY_MODEL_TYPE.values() if s.picture is not None)
        raise ValueError(
            f"--model {name_or_path} has model_type {config.model_type!r}; pictures exist for the methods "
            f"{pictured} (C-MAE's targets are features, not pixels, so it has none)"
        )

    auto = AutoModelForPreTraining if "AutoModelForPreTraining" in spec.auto_classes else AutoModel
    return load_checked(auto, name_or_path, config=config).eval()


def image_files(paths: list[str]) -> list[Path]:
    """The image files of `--images`: files given by name, and the regular files with an image suffix under the
    folders given. A named pipe or device is never opened (reading one waits for a writer, for ever), nor a link
    out of its folder."""
    files = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            root = path.resolve()
            files += sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and p.resolve().is_relative_to(root)
            )
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise ValueError(
                f"--images {name} is invalid: not a regular file (a pipe or device?); allowed: image files"
            )
        else:
            raise FileNotFoundError(f"--images {name}: no such file or folder")
    if not files:
        raise ValueError(f"--images {paths}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def load_images(
    config, images: list[str] | None = None, dataset: str | None = None, num_images: int = 8
) -> torch.Tensor:
    """Up to `num_images` images (from files and folders, else from the first images of `dataset`, the built-in
    digits by default) resized to the model's size and normalised with its mean and std: (B, C, H, W).
    Undecodable files are skipped; none at all is an error."""
    if images:
        sources = [str(path) for path in image_files(images)]
    else:
        raw, _ = load_pretraining_dataset(dataset)
        column = find_image_column(raw)
        sources = (raw[i][column] for i in range(min(len(raw), 4 * num_images)))
    pipeline = SamplePipeline(None, ImageAugmentation.from_config(config), seed=None, decode_lazily=False)
    tensors, errors = pipeline.first_decoded(sources, num_images)  # a bad file is skipped, as in training
    if not tensors:
        raise ValueError(f"no image could be decoded: {errors[:5]}")
    return torch.stack(tensors)


def visualize(
    model_name_or_path: str,
    output_dir: str | os.PathLike,
    images: list[str] | None = None,
    dataset: str | None = None,
    num_images: int = 8,
    mask_ratio: float | None = None,
    seed: int = 0,
    scale: int = 4,
) -> list[str]:
    """Write the method's pictures of `num_images` images into `output_dir`; returns their paths."""
    if num_images < 1:
        raise ValueError(f"num_images={num_images!r} is invalid: must be a positive integer")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"--scale {scale!r} is invalid: allowed: a positive int (pixels per image pixel)")
    overrides = {} if mask_ratio is None else {"mask_ratio": mask_ratio}
    model = load_pretraining_model(model_name_or_path, **overrides)
    pixel_values = load_images(model.config, images, dataset, num_images)
    os.makedirs(output_dir, exist_ok=True)
    names = save_method_pictures(model, pixel_values, output_dir, seed=seed, scale=scale)
    return [os.path.join(output_dir, name) for name in names]


__all__ = ["VisualizeArguments", "image_files", "load_images", "load_pretraining_model", "visualize"]
