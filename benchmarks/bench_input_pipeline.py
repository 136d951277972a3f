"""Does the input pipeline keep up? Images/s of data loading alone against the model's training step.

The loader is hf_mim's own pretraining path (image folder through `datasets`, lazy decode in `with_transform`,
MAE augmentation at 224 px, per-sample masking noise, the robust collate) over JPEGs of 500x375 pixels written
for the run, with DataLoader workers. The model step is MAEForPreTraining ViT-S/16 (forward, backward, AdamW) at
the same batch size. Both run on the same machine, one after the other; the loader must outrun the model.

    python benchmarks/bench_input_pipeline.py --batch-size 8 --num-workers 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def synthetic_images(num_images: int, image_size: int = 32, seed: int = 0) -> torch.Tensor:
    """(N, 3, S, S) images in [0, 1]: a linear colour gradient plus two to four flat shapes each, so that the JPEGs
    compress and decode like photographs rather than like noise."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, image_size), torch.linspace(0, 1, image_size), indexing="ij")
    images = torch.empty(num_images, 3, image_size, image_size)
    for n in range(num_images):
        c0, c1 = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
        angle = float(torch.rand((), generator=g)) * 2 * math.pi
        t = (xs * math.cos(angle) + ys * math.sin(angle)).clamp(0, 1)
        img = c0 * (1 - t) + c1 * t
        for _ in range(int(torch.randint(2, 5, (), generator=g))):
            colour = torch.rand(3, 1, 1, generator=g)
            cy, cx = (torch.rand(2, generator=g) * image_size).tolist()
            r = float(torch.rand((), generator=g)) * image_size / 4 + image_size / 10
            if torch.rand((), generator=g) < 0.5:
                shape = ((ys * image_size - cy) ** 2 + (xs * image_size - cx) ** 2) < r**2
            else:
                shape = ((ys * image_size - cy).abs() < r) & ((xs * image_size - cx).abs() < r * 0.7)
            img = torch.where(shape, colour, img)
        images[n] = img
    return images


def write_jpegs(folder: Path, count: int) -> None:
    from PIL import Image

    images = F.interpolate(synthetic_images(count, 64, seed=0), size=(375, 500), mode="bilinear", align_corners=False)
    for i, image in enumerate(images):
        array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(array).save(folder / f"{i:05d}.jpg", quality=90)


def loader_images_per_second(folder: Path, batch_size: int, num_workers: int, epochs: int) -> float:
    from hf_mim.modeling.mae import MAEConfig, sample_mae_inputs
    from hf_mim.training.data import Collator, PretrainingTransform, load_pretraining_dataset, prepare_dataset
    from hf_mim.training.transforms import ImageAugmentation

    config = MAEConfig(image_size=224, patch_size=16)
    raw, _ = load_pretraining_dataset(str(folder))
    transform = PretrainingTransform(
        "image",
        ImageAugmentation(224, config.image_mean, config.image_std),
        0,
        lambda generator: sample_mae_inputs(config, config.grid_size, generator),
    )
    dataset = prepare_dataset(raw, "image", transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=Collator((3, 224, 224)),
        drop_last=True,
        persistent_workers=num_workers > 0,
    )
    rates = []
    for epoch in range(epochs + 1):  # the first pass warms workers and the page cache
        transform.epoch = epoch
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += batch["pixel_values"].shape[0]
        if epoch > 0:
            rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def model_images_per_second(batch_size: int, steps: int) -> float:
    from hf_mim.modeling.mae import MAEConfig, MAEForPreTraining
    from hf_mim.training.presets import ENCODER_PRESETS

    model = MAEForPreTraining(MAEConfig(image_size=224, patch_size=16, **ENCODER_PRESETS["small"])).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels, noise = torch.randn(batch_size, 3, 224, 224), torch.rand(batch_size, 196)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        model(pixel_values=pixels, noise=noise).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="measured passes over the images")
    parser.add_argument("--model-steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_jpegs(folder, args.images)
        loader = loader_images_per_second(folder, args.batch_size, args.num_workers, args.epochs)
    model = model_images_per_second(args.batch_size, args.model_steps)
    import os

    print(f"machine: {os.cpu_count()} logical CPUs, torch {torch.__version__}")
    print(f"batch {args.batch_size}, {args.num_workers} loader workers, {args.images} JPEGs of 500x375 -> 224 px")
    print("| stage | images/s |")
    print("| --- | ---: |")
    print(f"| input pipeline alone | {loader:.1f} |")
    print(f"| MAE ViT-S/16 train step (fwd + bwd + AdamW) | {model:.2f} |")
    print(f"loader / model: {loader / model:.1f}x")


if __name__ == "__main__":
    main()
