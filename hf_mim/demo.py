"""A short MAE run on procedurally drawn images: proves an install works end to end in about a minute on a CPU.

Until `hf-mim pretrain` lands this is the README's main job. The images (coloured rectangles and discs on smooth
gradients) are drawn from a seed, so there is nothing to download and masked patches are predictable from their
neighbours, which is what lets the loss fall within a few dozen steps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .modeling.mae import MAEConfig, MAEForPreTraining


def synthetic_images(num_images: int, image_size: int = 32, seed: int = 0) -> torch.Tensor:
    """(N, 3, S, S) images in [0, 1]: a linear colour gradient plus two to four flat shapes each."""
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


def run_demo(output_dir: str | Path = "outputs/mae-demo", steps: int = 60, batch_size: int = 32, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    config = MAEConfig(
        image_size=32,
        patch_size=4,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=384,
        decoder_hidden_size=64,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=256,
        mask_ratio=0.75,
        norm_pix_loss=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
    )
    model = MAEForPreTraining(config)
    mean, std = torch.tensor(config.image_mean)[:, None, None], torch.tensor(config.image_std)[:, None, None]
    data = (synthetic_images(1024, config.image_size, seed) - mean) / std
    decay = [p for n, p in model.named_parameters() if n not in model.no_weight_decay()]
    no_decay = [p for n, p in model.named_parameters() if n in model.no_weight_decay()]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95)
    )
    g = torch.Generator().manual_seed(seed)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = data[torch.randint(0, len(data), (batch_size,), generator=g)]
        loss = model(pixel_values=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % 10 == 0 or step == steps:
            print(f"step {step:4d}/{steps}  loss {loss.item():.4f}", flush=True)
    elapsed = time.perf_counter() - start
    model.save_pretrained(output_dir)

    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(output_dir).eval()
    with torch.no_grad():
        features = encoder(pixel_values=data[:4]).last_hidden_state
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"trained {steps} steps in {elapsed:.1f}s; loss {first:.4f} -> {last:.4f} (mean of first / last 5 steps)")
    print(f"saved to {output_dir}; AutoModel features {tuple(features.shape)}")
    return {"first_loss": first, "last_loss": last, "seconds": elapsed, "output_dir": str(output_dir)}
