"""Does the input pipeline keep up? Images/s of data loading alone against the model's training step.

The loader is hf_mim's own pretraining path (image folder through `datasets`, lazy decode in `with_transform`,
MAE augmentation at 224 px, per-sample masking noise, the robust collate) over JPEGs of 500x375 pixels written
for the run, with DataLoader workers. The model step is MAEForPreTraining ViT-S/16 (forward, backward, AdamW) at
the same batch size. Both run on the same machine, one after the other; the loader must outrun the model.

    python benchmarks/bench_input_pipeline.py --batch-size 8 --num-workers 2

`--per-core` measures instead what one core decodes and augments (RandomResizedCrop to 224, flip, normalise; no
DataLoader, one torch thread), with JPEG draft mode off and on, over photo-like JPEGs (texture noise added, so
that they weigh what ImageNet's do, about 110 kB), and how much the drafted pixels differ:

    python benchmarks/bench_input_pipeline.py --per-core --images 300
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


def write_jpegs(folder: Path, count: int, texture: float = 0.0, size: tuple[int, int] = (500, 375)) -> None:
    """`count` JPEGs of `size` (width, height; 500x375 is ImageNet's most common size), quality 90; `texture` is the
    standard deviation of the pixel noise added (0: smooth shapes, which weigh about a fifth of a photo)."""
    from PIL import Image

    images = synthetic_images(count, 64, seed=0)
    images = F.interpolate(images, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    if texture:
        images = images + texture * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    for i, image in enumerate(images):
        array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype("uint8")
        Image.fromarray(array).save(folder / f"{i:05d}.jpg", quality=90)


def loader_images_per_second(folder: Path, batch_size: int, num_workers: int, epochs: int, uint8: bool = True) -> float:
    """Images/s out of the DataLoader. `uint8`: as `hf-mim pretrain` loads since issue #20, uint8 crops from the
    workers, normalised in the main process (on the GPU in a GPU run); else float32 normalised in the workers."""
    from hf_mim.data.images import ImageAugmentation
    from hf_mim.data.pipeline import Collator, SamplePipeline, prepare_dataset
    from hf_mim.data.sources import load_pretraining_dataset
    from hf_mim.modeling.mae import MAEConfig, sample_mae_inputs

    config = MAEConfig(image_size=224, patch_size=16)
    raw, _ = load_pretraining_dataset(str(folder))
    transform = SamplePipeline(
        "image",
        ImageAugmentation(224, config.image_mean, config.image_std),
        0,
        lambda generator: sample_mae_inputs(config, config.grid_size, generator),
        normalize=not uint8,
    )
    dataset = prepare_dataset(raw, "image", transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=Collator((3, 224, 224), dtype=torch.uint8 if uint8 else torch.float32),
        drop_last=True,
        persistent_workers=num_workers > 0,
    )
    rates = []
    for epoch in range(epochs + 1):  # the first pass warms workers and the page cache
        transform.epoch = epoch
        start, seen = time.perf_counter(), 0
        for batch in loader:
            pixels = transform.augment.normalize(batch["pixel_values"]) if uint8 else batch["pixel_values"]
            seen += pixels.shape[0]
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


def per_core(folder: Path, repeats: int = 5) -> dict:
    """Images/s of one core decoding and augmenting every JPEG of `folder` to 224 px, draft mode off and on (passes
    interleaved, the median of `repeats` each, after a warm-up pass), the rate of decoding alone, the share of
    images drafted, and the mean absolute pixel difference between the two modes (0-255 scale)."""
    from hf_mim.data.images import ImageAugmentation, draft_for_crop, open_image
    from hf_mim.data.pipeline import sample_generator

    torch.set_num_threads(1)
    files = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    out = {"images": len(files), "mean_kB": sum(map(len, files)) / len(files) / 1e3}
    augments = {draft: ImageAugmentation(224, [0.0] * 3, [1.0] * 3, jpeg_draft=draft) for draft in (False, True)}
    rates, tensors = {False: [], True: []}, {}
    for repeat in range(repeats + 1):  # pass 0 warms the caches and Pillow's plugins
        for draft in (False, True) if repeat % 2 else (True, False):
            start = time.perf_counter()
            result = [
                augments[draft](open_image(d, load=False), sample_generator(0, 0, i)) for i, d in enumerate(files)
            ]
            rates[draft].append(len(files) / (time.perf_counter() - start))
            tensors[draft] = torch.stack(result)
    out["full"], out["draft"] = (statistics.median(rates[d][1:]) for d in (False, True))
    start = time.perf_counter()
    for data in files:
        open_image(data)
    out["decode_only"] = len(files) / (time.perf_counter() - start)
    drafted = 0
    for i, data in enumerate(files):  # the crops the train transform draws, and whether each was drafted
        from hf_mim.data.images import random_resized_crop_box

        image = open_image(data, load=False)
        box = random_resized_crop_box(*image.size, sample_generator(0, 0, i))
        full_size = image.size
        draft_for_crop(image, box, (224, 224))
        drafted += image.size != full_size
    out["drafted_share"] = drafted / len(files)
    out["mean_abs_diff_255"] = float((tensors[True] - tensors[False]).abs().mean() * 255)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="measured passes over the images")
    parser.add_argument("--model-steps", type=int, default=4)
    parser.add_argument("--texture", type=float, default=0.0, help="pixel noise: 0.12 makes photo-like 115 kB JPEGs")
    parser.add_argument("--per-core", action="store_true", help="one core's decode + augment rate, draft off and on")
    parser.add_argument(
        "--jpeg-sizes", nargs="+", default=["500x375", "1024x768"], help="--per-core: image sizes, WIDTHxHEIGHT"
    )
    args = parser.parse_args()
    if args.per_core:
        import platform

        print(
            f"machine: {platform.processor() or platform.machine()}, Pillow {__import__('PIL').__version__}, one core"
        )
        print(f"{args.images} JPEGs per size, decoded, RandomResizedCrop (0.2-1) to 224 px, flipped, normalised")
        print("| JPEG size | kB | decode alone | full scale | draft mode | speed-up | drafted | mean abs diff /255 |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for size in args.jpeg_sizes:
            width, height = (int(v) for v in size.split("x"))
            with tempfile.TemporaryDirectory() as tmp:
                write_jpegs(Path(tmp), args.images, texture=0.12, size=(width, height))
                r = per_core(Path(tmp))
            print(
                f"| {size} | {r['mean_kB']:.0f} | {r['decode_only']:.1f} | {r['full']:.1f} | {r['draft']:.1f} | "
                f"{r['draft'] / r['full']:.2f}x | {r['drafted_share']:.0%} | {r['mean_abs_diff_255']:.2f} |"
            )
        print("(images/s per core; decode alone: Image.open + load, nothing else)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_jpegs(folder, args.images, texture=args.texture)
        loader = loader_images_per_second(folder, args.batch_size, args.num_workers, args.epochs)
        loader_float = loader_images_per_second(folder, args.batch_size, args.num_workers, args.epochs, uint8=False)
    import os

    print(f"machine: {os.cpu_count()} logical CPUs, torch {torch.__version__}")
    print(f"batch {args.batch_size}, {args.num_workers} loader workers, {args.images} JPEGs of 500x375 -> 224 px")
    print("| stage | images/s |")
    print("| --- | ---: |")
    print(f"| input pipeline alone (uint8 from the workers, as hf-mim pretrain) | {loader:.1f} |")
    print(f"| input pipeline alone, float32 normalised in the workers (before issue #20) | {loader_float:.1f} |")
    if args.model_steps:  # 0: the loader alone (benchmarks/gpu_check.sh)
        model = model_images_per_second(args.batch_size, args.model_steps)
        print(f"| MAE ViT-S/16 train step (fwd + bwd + AdamW) | {model:.2f} |")
        print(f"loader / model: {loader / model:.1f}x")


if __name__ == "__main__":
    main()
