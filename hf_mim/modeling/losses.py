"""Losses shared across methods."""

from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6
IGNORE_INDEX = -100  # torch's and transformers' label for "no loss here"


def normalize_patches(patches: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """MAE's normalised-pixel target: each patch minus its mean, over sqrt(unbiased variance + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


def denormalize_patches(
    predicted: torch.Tensor, patches: torch.Tensor, visible: torch.Tensor, eps: float = NORM_PIX_EPS
) -> torch.Tensor:
    """Predictions of `normalize_patches`'s target put back in the pixels' scale, with what the model saw.

    predicted, patches: (B, L, P); visible: (B, L), 1 for the patches the model was shown. A masked patch's own
    statistics are what the model had to guess, so every prediction is put back with the average mean and the average
    variance of the image's visible patches (facebookresearch/mae#190). Pooling all visible values instead would add
    the between-patch variance and blow up the small per-patch contrasts (the colour offsets of dark patches)."""
    visible = visible.to(patches.dtype)
    count = visible.sum(dim=1).clamp_min(1)
    mean = (patches.mean(dim=-1) * visible).sum(dim=1) / count  # (B,)
    var = (patches.var(dim=-1) * visible).sum(dim=1) / count
    return predicted * (var[:, None, None] + eps).sqrt() + mean[:, None, None]


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the patches where `mask` is 1.

    pred, target: (B, L, P); mask: (B, L) with 1 for patches that count. Computed in float32 whatever the inputs,
    so that bf16/fp16 reconstructions do not lose the loss to rounding.
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


def per_image_masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`masked_mse_loss` taken per image, then averaged over images: the same value when every image has the same
    total weight (MAE's masks), but each weight's gradient, `(e_l - loss of its image) / (B * sum of its image's
    weights)`, compares a patch with its own image only, whatever else the batch (or another process's) holds."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    weights = weights.to(per_patch.dtype)
    return ((per_patch * weights).sum(dim=1) / weights.sum(dim=1)).mean()


def masked_pixel_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, bool_masked_pos: torch.Tensor, patch_size: int, eps: float = 1e-5
) -> torch.Tensor:
    """SimMIM's loss: L1 between (B, C, H, W) images, averaged over the pixels (and channels) of masked patches.

    `bool_masked_pos` (B, rows * cols) is upsampled to pixels; the normaliser is
    `(masked pixels + eps) * channels`, exactly as SimMIM and transformers' `ViTForMaskedImageModeling` compute it.
    """
    batch, channels, height, width = target.shape
    rows, cols = height // patch_size, width // patch_size
    mask = bool_masked_pos.reshape(batch, rows, cols).repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    mask = mask.unsqueeze(1).to(torch.float32)
    per_pixel = torch.nn.functional.l1_loss(pred.float(), target.float(), reduction="none")
    return (per_pixel * mask).sum() / (mask.sum() + eps) / channels


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, L, V) logits against (B, L) ids on the masked positions only (BEiT), in float32.

    Visible positions are excluded through `ignore_index`, not by indexing: `logits[mask]` has a data-dependent
    shape, which splits a compiled graph (and syncs a GPU) on every step."""
    targets = labels.masked_fill(~bool_masked_pos.bool(), IGNORE_INDEX)
    return torch.nn.functional.cross_entropy(
        logits.flatten(0, -2).float(), targets.flatten(), ignore_index=IGNORE_INDEX
    )


NEGATIVES = ("batch", "positions")


def token_info_nce(
    queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.2, negatives: str = "batch"
) -> torch.Tensor:
    """Token-wise InfoNCE between (B, L, P) queries and keys; the positive of query (b, i) is key (b, i).

    `negatives="batch"`: the candidates of (b, i) are the keys at position i of every image of the (local) batch;
    `negatives="positions"`: the keys at every position of image b. Cosine similarities over `temperature`,
    cross-entropy averaged over all B * L queries, in float32.
    """
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    if negatives == "batch":
        logits = torch.einsum("bip,cip->ibc", q, k) / temperature  # (L, B, B): position, query image, key image
    elif negatives == "positions":
        logits = torch.einsum("bip,bjp->bij", q, k) / temperature  # (B, L, L): image, query position, key position
    else:
        raise ValueError(f"negatives={negatives!r} is invalid: one of {NEGATIVES}")
    targets = torch.arange(logits.shape[-1], device=logits.device).expand(logits.shape[:-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def byol_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE, 2 - 2 cos(p, z), averaged over every leading position, in float32."""
    p = torch.nn.functional.normalize(predictions.float(), dim=-1)
    z = torch.nn.functional.normalize(targets.float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2B embeddings: the positive of z1[i] is z2[i] and the reverse; every other embedding of
    both views is a negative; the embedding itself is excluded. Cosine similarities over `temperature`, mean
    cross-entropy over the 2B anchors, in float32."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).float(), dim=-1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    batch = len(z1)
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return torch.nn.functional.cross_entropy(logits, targets)


def simsiam_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SimSiam's negative cosine similarity, the target side stopped, averaged, in float32."""
    return -torch.nn.functional.cosine_similarity(predictions.float(), targets.detach().float(), dim=-1).mean()


def sparsity_penalty(masks: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """ADIOS's penalty on (B, N, H, W) masks: sum over masks of the batch mean of 1 / (sin(pi * area) + eps), with
    area the mask's mean over pixels. Large for empty and for full masks, 1 / (1 + eps) at half the image.

    In float32 whatever the autocast dtype, and with the sine clamped at 0: in float32 sin(pi * 1.0) is -8.7e-8, so
    unclamped a full mask would score -1.1e7 rather than the 1e10 an empty one does."""
    with torch.autocast(device_type=masks.device.type, enabled=False):
        area = masks.float().mean(dim=(-2, -1))
        return (1.0 / (torch.sin(torch.pi * area).clamp_min(0.0) + eps)).mean(dim=0).sum()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """`x` in the forward; minus `scale` times the gradient in the backward (Ganin & Lempitsky's gradient reversal):
    what lets one optimizer train an adversary that maximises the loss the rest minimises (ADIOS's occlusion model,
    MAE's learned masks under `transformers.Trainer`)."""
    return _ReverseGradient.apply(x, scale)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice (SimCLR's GatherLayer)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        import torch.distributed as dist

        grad = torch.stack(grads)
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_across_ranks(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process along dim 0, differentiably; `x` itself when not distributed.

    Every rank then computes the loss of the global batch. Its gradient for the local rows is the sum over ranks
    (W copies of the same gradient); DDP's mean over ranks brings that back to the single-process gradient."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x))


__all__ = [
    "masked_mse_loss",
    "per_image_masked_mse_loss",
    "masked_pixel_l1_loss",
    "masked_cross_entropy",
    "normalize_patches",
    "token_info_nce",
    "byol_loss",
    "nt_xent",
    "simsiam_loss",
    "sparsity_penalty",
    "gather_across_ranks",
    "reverse_gradient",
    "NEGATIVES",
    "NORM_PIX_EPS",
    "denormalize_patches",
]
