"""Occlusion invariance (Kong & Zhang, "Understanding MIM via Learning Occlusion Invariant Feature"): how similar an
encoder's features of an image are to its features of the same image with patches occluded, block by block,
measured with linear CKA (Kornblith et al., 2019).

For each mask ratio r, every image gets its own random mask (drawn from (seed, ratio, image index), so every
checkpoint sees the same masks, on any number of processes). The occluded image is encoded as MAE's encoder sees
one, from its visible patches alone (`occlusion="drop"`), or with the masked patches' pixels set to the dataset
mean, all patches kept (`"zero"`: 0 after normalisation). An image's feature at a block is the block's output,
through the final LayerNorm, pooled over the visible patches (`pooling="mean"`: the same positions in both
encodings) or its CLS token (`"cls"`). CKA is computed over the images, per block and ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.pipeline import sample_generator
from ..modeling.masking import random_masking

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OCCLUSIONS = ("drop", "zero")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between representations x (n, p) and y (n, q) of the same n examples:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), with Xc, Yc centred over the examples; in float64.
    1 for representations equal up to an orthogonal transform and isotropic scaling; 0 when they are orthogonal."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must be (n, p) and (n, q) over the same n examples, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    if x.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 examples, got {x.shape[0]}")
    x = x.double() - x.double().mean(dim=0)
    y = y.double() - y.double().mean(dim=0)
    # With n < p, the n x n Gram matrices are the cheaper route: ||Yc^T Xc||_F^2 = <Xc Xc^T, Yc Yc^T>.
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        gx, gy = x @ x.T, y @ y.T
        cross, norm_x, norm_y = (gx * gy).sum(), gx.norm(), gy.norm()
    else:
        cross, norm_x, norm_y = (y.T @ x).pow(2).sum(), (x.T @ x).norm(), (y.T @ y).norm()
    if norm_x == 0 or norm_y == 0:
        return float("nan")  # a constant representation carries nothing to compare
    return float(cross / (norm_x * norm_y))


def occlusion_masks(indices: torch.Tensor, num_patches: int, ratio_index: int, mask_ratio: float, seed: int):
    """One random mask per image, seeded by (seed, ratio_index, image index): (ids_keep (B, K), mask (B, L))."""
    noise = torch.stack(
        [torch.rand(num_patches, generator=sample_generator(seed, 1000 + ratio_index, int(i))) for i in indices]
    )
    masking = random_masking(len(indices), num_patches, mask_ratio, noise=noise)
    return masking.ids_keep, masking.mask.bool()


def _pooled(hidden: torch.Tensor, norm, pooling: str, ids_keep: torch.Tensor | None) -> torch.Tensor:
    hidden = norm(hidden)
    if pooling == "cls":
        return hidden[:, 0]
    patches = hidden[:, 1:]
    if ids_keep is not None:
        patches = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return patches.mean(dim=1)


@torch.no_grad()
def occlusion_features(
    model,
    pixel_values: torch.Tensor,
    indices: torch.Tensor,
    mask_ratios: Sequence[float] = DEFAULT_RATIOS,
    occlusion: str = "drop",
    pooling: str = "mean",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block features of full and occluded images: full (depth, R, B, D) and occluded (depth, R, B, D), where
    the full image's features are pooled over the same visible patches as the occluded one's for each ratio."""
    if occlusion not in OCCLUSIONS:
        raise ValueError(f"occlusion={occlusion!r} is invalid: allowed {OCCLUSIONS}")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling={pooling!r} is invalid: allowed ('cls', 'mean')")
    vit = model.vit
    grid = vit.input_grid(pixel_values)
    num_patches = grid[0] * grid[1]
    full_states = vit(pixel_values, output_hidden_states=True).hidden_states
    full_states = full_states[1:]  # the outputs of the blocks, not the embeddings
    full, occluded = [], []
    for r, ratio in enumerate(mask_ratios):
        ids_keep, mask = occlusion_masks(indices, num_patches, r, ratio, seed)
        ids_keep = ids_keep.to(pixel_values.device)
        if occlusion == "drop":
            states = vit(pixel_values, ids_keep=ids_keep, output_hidden_states=True).hidden_states
            keep_in_occluded = None  # only the visible patches are there
        else:
            patch = vit.patch_size
            pixel_mask = mask.view(-1, 1, *grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
            occluded_pixels = pixel_values.masked_fill(pixel_mask.to(pixel_values.device), 0.0)
            states = vit(occluded_pixels, output_hidden_states=True).hidden_states
            keep_in_occluded = ids_keep
        full.append(torch.stack([_pooled(h, vit.norm, pooling, ids_keep) for h in full_states]))
        occluded.append(torch.stack([_pooled(h, vit.norm, pooling, keep_in_occluded) for h in states[1:]]))
    return torch.stack(full, dim=1).float(), torch.stack(occluded, dim=1).float()


def cka_table(full: torch.Tensor, occluded: torch.Tensor) -> torch.Tensor:
    """(depth, R, N, D) features of N images -> (R, depth) linear CKA between full and occluded."""
    depth, ratios = full.shape[:2]
    return torch.tensor([[linear_cka(full[b, r], occluded[b, r]) for b in range(depth)] for r in range(ratios)])


def plot_cka(results: dict[str, torch.Tensor], mask_ratios: Sequence[float], path, title: str = "") -> str:
    """Two panels, one line per model: CKA of the last block against the mask ratio, and CKA against the block at
    every ratio's mean. `results` maps a model name to its (R, depth) table."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    by_ratio, by_block = figure.subplots(1, 2)
    for name, table in results.items():
        by_ratio.plot(list(mask_ratios), table[:, -1].tolist(), marker="o", label=name)
        by_block.plot(range(1, table.shape[1] + 1), table.mean(dim=0).tolist(), marker="o", label=name)
    by_ratio.set(xlabel="mask ratio", ylabel="linear CKA (last block)", ylim=(0, 1.02), title="full vs occluded")
    by_block.set(xlabel="block", ylabel="linear CKA (mean over ratios)", ylim=(0, 1.02), title="by depth")
    for axes in (by_ratio, by_block):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return str(path)


__all__ = [
    "DEFAULT_RATIOS",
    "OCCLUSIONS",
    "cka_table",
    "linear_cka",
    "occlusion_features",
    "occlusion_masks",
    "plot_cka",
]
