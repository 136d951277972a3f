"""Masking as pure functions over the patch grid.

Conventions used across hf_mim: a mask is (B, L) (or (L,) for one image) with 1 / True for a masked patch and
0 / False for a visible one, patches numbered row-major over the (rows, cols) grid, as transformers'
`bool_masked_pos`. Functions draw their randomness from an explicit `noise` tensor or `torch.Generator`, so a
seed reproduces a mask exactly, in the data pipeline as in the model.

Strategies (`mask_strategy` in every masking method's config):

- `"random"`: uniform random patches at `mask_ratio` (MAE);
- `"mask_patch"`: random squares of `mask_patch_size` pixels covering `mask_ratio` of the image (SimMIM);
- `"block"`: rectangular blocks of at least `mask_min_num_patches` patches, aspect ratio in
  [`mask_min_aspect`, 1 / `mask_min_aspect`], until `mask_ratio` of the patches are masked (BEiT);
- `"central"`: one centred rectangle of about `mask_ratio` of the image, a square on square grids
  (Context Encoders' central region);
- `"rectangles"`: possibly overlapping random rectangles of up to half the grid's sides until `mask_ratio` of the
  patches are masked (Context Encoders' random blocks).

MAE also takes `"learned"`: a mask model scores the patches and the top-scoring ones are masked
(`learned_masking`). It is not in `MASK_STRATEGIES`, whose entries draw a mask from a generator alone.

Every strategy except `"central"` masks exactly `num_masked_patches(L, mask_ratio)` patches (SimMIM's counts
whole mask patches, see `mask_patch_mask`), so one config gives every image the same number of masked patches,
which lets MAE drop them whatever the strategy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .backbone import MIMConfig, config_error, to_2tuple

# BEiT gives up on placing a block after this many tries (MaskingGenerator._mask)
_BLOCK_ATTEMPTS = 10


@dataclass
class MaskIndices:
    """Index form of any mask, as MAE uses it.

    ids_keep: (B, K) indices of the visible patches, in the order the encoder sees them.
    ids_restore: (B, L) permutation that puts [visible..., masked...] back into grid order.
    mask: (B, L) float, 0 is keep, 1 is remove.
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def num_visible_patches(num_patches: int, mask_ratio: float) -> int:
    """Patches MAE keeps visible: `int(L * (1 - mask_ratio))`, rounding down like MAE and transformers."""
    return int(num_patches * (1 - mask_ratio))


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
    """Patches masked at `mask_ratio`: `L - int(L * (1 - mask_ratio))`, MAE's count, used by every strategy."""
    return num_patches - num_visible_patches(num_patches, mask_ratio)


def _check_ratio(mask_ratio: float) -> None:
    if not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio!r} is invalid: must lie strictly between 0 and 1")


def random_masking(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskIndices:
    """MAE's per-sample uniform masking: the `L - int(L * (1 - mask_ratio))` patches with the highest noise are masked.

    `noise` (B, L) has the meaning of transformers' ViTMAE `noise` argument: patches are sorted by ascending noise
    and the lowest are kept. Without it, noise is drawn from `generator` (or the global RNG).
    """
    _check_ratio(mask_ratio)
    if noise is None:
        noise = torch.rand(batch_size, num_patches, generator=generator, device=device)
    elif tuple(noise.shape) != (batch_size, num_patches):
        raise ValueError(
            f"noise must have shape (batch, num_patches) = {(batch_size, num_patches)}, got {tuple(noise.shape)}"
        )
    len_keep = num_visible_patches(num_patches, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    # A patch is masked exactly when its rank in the shuffle falls beyond the kept prefix.
    mask = (ids_restore >= len_keep).to(torch.float32)
    return MaskIndices(ids_keep=ids_shuffle[:, :len_keep], ids_restore=ids_restore, mask=mask)


def bool_mask_to_indices(bool_masked_pos: torch.Tensor) -> MaskIndices:
    """Index form of a (B, L) boolean mask with the same number of masked patches in every row: visible patches in
    grid order, then masked ones in grid order. Raises if the rows differ, since the visible sets could not be
    stacked."""
    if bool_masked_pos.ndim != 2:
        raise ValueError(f"bool_masked_pos must have shape (batch, num_patches), got {tuple(bool_masked_pos.shape)}")
    mask = bool_masked_pos.bool()
    counts = mask.sum(dim=1)
    if (counts != counts[0]).any():
        raise ValueError(
            f"bool_masked_pos masks {sorted(set(counts.tolist()))} patches in different rows; dropping masked "
            "patches needs the same count in every row"
        )
    length, masked = mask.shape[1], int(counts[0])
    if not 0 < masked < length:
        raise ValueError(
            f"bool_masked_pos masks {masked} of {length} patches; at least one must be kept and one masked"
        )
    # A stable sort on the mask puts visible patches first, each group in grid order.
    ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return MaskIndices(ids_keep=ids_shuffle[:, : length - masked], ids_restore=ids_restore, mask=mask.float())


# ----------------------------------------------------------------------------------------------------------------
# Boolean masks for one image, (rows * cols,)
# ----------------------------------------------------------------------------------------------------------------


def random_patch_mask(
    grid_size: tuple[int, int], mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniformly random patches: exactly `num_masked_patches(L, mask_ratio)` of them."""
    _check_ratio(mask_ratio)
    length = grid_size[0] * grid_size[1]
    mask = torch.zeros(length, dtype=torch.bool)
    mask[torch.randperm(length, generator=generator)[: num_masked_patches(length, mask_ratio)]] = True
    return mask


def mask_patch_mask(
    grid_size: tuple[int, int], mask_ratio: float, scale: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SimMIM's masking: the grid is cut into squares of `scale` x `scale` model patches (`scale` =
    mask_patch_size / patch_size) and `ceil(squares * mask_ratio)` random squares are masked, as in SimMIM's
    `MaskGenerator`. Exactly that many squares, so `scale**2` times as many patches."""
    _check_ratio(mask_ratio)
    rows, cols = grid_size
    if scale < 1 or rows % scale or cols % scale:
        raise ValueError(
            f"scale={scale} is invalid: mask patches of {scale}x{scale} patches must tile a {rows}x{cols} grid"
        )
    coarse_rows, coarse_cols = rows // scale, cols // scale
    count = coarse_rows * coarse_cols
    coarse = torch.zeros(count, dtype=torch.bool)
    coarse[torch.randperm(count, generator=generator)[: math.ceil(count * mask_ratio)]] = True
    coarse = coarse.view(coarse_rows, coarse_cols)
    return coarse.repeat_interleave(scale, 0).repeat_interleave(scale, 1).reshape(-1)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform in [low, high], both included."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def _fill_with_rectangles(grid_size, target: int, draw_shape, generator, exact: bool) -> torch.Tensor:
    """BEiT's MaskingGenerator loop, generalised over how a rectangle's shape is drawn: place rectangles (overlaps
    allowed) while each adds at least one and at most the remaining number of patches; stop at `target` or when
    `_BLOCK_ATTEMPTS` tries in a row add nothing. With `exact`, a shortfall is topped up with random patches."""
    rows, cols = grid_size
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    count = 0
    while count < target:
        remaining = target - count
        added = 0
        for _ in range(_BLOCK_ATTEMPTS):
            height, width = draw_shape(remaining)
            if not (1 <= height < rows and 1 <= width < cols):  # strict, as BEiT
                continue
            top, left = _randint(0, rows - height, generator), _randint(0, cols - width, generator)
            region = mask[top : top + height, left : left + width]
            new = height * width - int(region.sum())
            if 0 < new <= remaining:
                region.fill_(True)
                added = new
                break
        if added == 0:
            break
        count += added
    mask = mask.reshape(-1)
    if exact and count < target:
        free = (~mask).nonzero().squeeze(1)
        mask[free[torch.randperm(free.numel(), generator=generator)[: target - count]]] = True
    return mask


def block_mask(
    grid_size: tuple[int, int],
    mask_ratio: float,
    min_num_patches: int = 16,
    max_num_patches: int | None = None,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    generator: torch.Generator | None = None,
    exact: bool = True,
) -> torch.Tensor:
    """BEiT's block-wise masking (Algorithm 1 of the paper, unilm's `MaskingGenerator`): blocks of area drawn
    uniformly in [`min_num_patches`, min(remaining, `max_num_patches`)] and log-uniform aspect ratio in
    [`min_aspect`, `max_aspect` (default 1 / min_aspect)], until `num_masked_patches(L, mask_ratio)` are masked.

    BEiT stops short when ten tries in a row fail to place a block (small grids, large minimum blocks); with
    `exact` (the default) the shortfall is topped up with random single patches so that the count is exact.
    """
    _check_ratio(mask_ratio)
    rows, cols = grid_size
    target = num_masked_patches(rows * cols, mask_ratio)
    max_num_patches = target if max_num_patches is None else max_num_patches
    max_aspect = max_aspect if max_aspect is not None else 1.0 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def draw_shape(remaining: int) -> tuple[int, int]:
        area = _uniform(min_num_patches, min(remaining, max_num_patches), generator)
        aspect = math.exp(_uniform(*log_aspect, generator))
        return int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))

    return _fill_with_rectangles(grid_size, target, draw_shape, generator, exact)


def rectangles_mask(
    grid_size: tuple[int, int], mask_ratio: float, generator: torch.Generator | None = None, exact: bool = True
) -> torch.Tensor:
    """Context Encoders' random blocks: overlapping rectangles with sides uniform in [1, ceil(side / 2)] until
    `num_masked_patches(L, mask_ratio)` patches are masked (topped up with single patches when `exact`)."""
    _check_ratio(mask_ratio)
    rows, cols = grid_size

    def draw_shape(remaining: int) -> tuple[int, int]:
        return _randint(1, math.ceil(rows / 2), generator), _randint(1, math.ceil(cols / 2), generator)

    return _fill_with_rectangles(grid_size, num_masked_patches(rows * cols, mask_ratio), draw_shape, generator, exact)


def central_mask(grid_size: tuple[int, int], mask_ratio: float) -> torch.Tensor:
    """Context Encoders' central region: one centred rectangle with the grid's aspect ratio (a square on a square
    grid) whose sides are `round(side * sqrt(mask_ratio))` patches, at least one. Deterministic; the count is that
    rectangle's area, the closest such rectangle to `mask_ratio`, not necessarily `num_masked_patches`."""
    _check_ratio(mask_ratio)
    rows, cols = grid_size
    height = min(rows, max(1, round(rows * math.sqrt(mask_ratio))))
    width = min(cols, max(1, round(cols * math.sqrt(mask_ratio))))
    if height * width == rows * cols:
        raise ValueError(f"mask_ratio={mask_ratio} masks the whole {rows}x{cols} grid with a central region")
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    top, left = (rows - height) // 2, (cols - width) // 2
    mask[top : top + height, left : left + width] = True
    return mask.reshape(-1)


# ----------------------------------------------------------------------------------------------------------------
# Learned masks: the top-scoring patches, with a relaxation the scores can be trained through
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LearnedMask:
    """A learned mask, as `learned_masking` returns it.

    indices: the hard mask in MAE's index form.
    weights: (B, L) float, equal in value to `indices.mask`: the loss's per-patch weights, through which its
        gradient reaches the scores (straight-through, on the masked patches).
    relaxed: (B, L) float in (0, 1): the relaxed mask of the scored patches, `sigmoid(perturbed - threshold)`,
        with gradient to the scores; 0 on the randomly masked patches.
    learned: (B, L) bool: the patches the scores masked (the others of the mask are random).
    scores: (B, L) float: the scores, standardised per image, detached.
    """

    indices: MaskIndices
    weights: torch.Tensor
    relaxed: torch.Tensor
    learned: torch.Tensor
    scores: torch.Tensor


def gumbel_from_uniform(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform noise in [0, 1] (clamped away from both ends, in float32)."""
    tiny = torch.finfo(torch.float32).tiny
    u = uniform.float().clamp(tiny, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def learned_mask_counts(num_patches: int, mask_ratio: float, random_ratio: float) -> tuple[int, int]:
    """(patches masked at random, patches masked by score): `round(M * random_ratio)` and the rest of the
    `M = num_masked_patches(L, mask_ratio)`."""
    masked = num_masked_patches(num_patches, mask_ratio)
    randomly = round(masked * random_ratio)
    return randomly, masked - randomly


def learned_masking(
    scores: torch.Tensor,
    mask_ratio: float,
    random_ratio: float,
    temperature: float,
    *,
    noise: torch.Tensor,
    score_noise: torch.Tensor,
    reverse: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LearnedMask:
    """Mask the top-scoring patches: Gumbel top-k over per-image standardised scores, plus a random share.

    Of the `M = num_masked_patches(L, mask_ratio)` masked patches, `round(M * random_ratio)` are the ones with the
    highest `noise` (MAE's convention), whatever the scores; the others are the top `K` of
    `standardise(scores) / temperature + Gumbel(score_noise)` among the rest. The Gumbel perturbation makes this a
    sample without replacement from the softmax of the scaled scores (the Gumbel top-k trick, Kool et al. 2019),
    so a patch's chance grows with its score and no patch is certain; the standardisation keeps the scores from
    growing until the noise stops mattering.

    The hard mask is not differentiable. Its relaxation `sigmoid(perturbed - threshold)` (the threshold halfway
    between the K-th and (K+1)-th perturbed score) enters the loss straight-through as the masked patches' weights,
    `weights = mask + mask * (relaxed - relaxed.detach())`, equal to the mask in value. MAE's loss taken per image,
    the weighted mean `sum(w * e) / sum(w)` of the image's per-patch errors e, has the derivative `(e_l - loss) / M`
    with respect to a masked patch's weight: a patch harder to reconstruct than its image's average pulls its score
    up, an easier one down (the gain from masking it, against the image's mean as a baseline). Only masked patches
    have a reconstruction error, so only they carry this gradient; the Gumbel noise and the random share make every
    patch masked some of the time. `reverse` (a gradient reversal) is applied to the relaxation on its way into the
    weights, so that the loss's minimiser and the scores' maximiser share one backward pass.

    scores: (B, L) float; noise, score_noise: (B, L) uniform in [0, 1].
    """
    _check_ratio(mask_ratio)
    batch, length = scores.shape
    for name, value in (("noise", noise), ("score_noise", score_noise)):
        if tuple(value.shape) != (batch, length):
            raise ValueError(
                f"{name} must have shape (batch, num_patches) = {(batch, length)}, got {tuple(value.shape)}"
            )
    randomly, by_score = learned_mask_counts(length, mask_ratio, random_ratio)
    if by_score < 1:
        raise ValueError(f"random_ratio={random_ratio} leaves no patch to the scores (mask_ratio={mask_ratio})")
    scores = scores.float()
    mean, var = scores.mean(dim=1, keepdim=True), scores.var(dim=1, keepdim=True)
    standard = (scores - mean) * torch.rsqrt(var + 1e-6)
    perturbed = standard / temperature + gumbel_from_uniform(score_noise)
    at_random = torch.zeros(batch, length, dtype=torch.bool, device=scores.device)
    if randomly:
        at_random.scatter_(1, noise.topk(randomly, dim=1).indices, True)
    # the K+1 largest perturbed scores outside the random share (K + 1 <= L - R since at least one patch is kept)
    ranked = perturbed.detach().masked_fill(at_random, float("-inf")).topk(by_score + 1, dim=1)
    learned = torch.zeros_like(at_random).scatter_(1, ranked.indices[:, :by_score], True)
    threshold = (ranked.values[:, by_score - 1] + ranked.values[:, by_score]) / 2
    relaxed = torch.sigmoid(perturbed - threshold.unsqueeze(1)).masked_fill(at_random, 0.0)
    mask = learned | at_random
    # visible first, then masked, each in grid order (what `bool_mask_to_indices` gives, without its checks)
    ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, : length - randomly - by_score]
    flowing = reverse(relaxed) if reverse is not None else relaxed
    hard = mask.float()
    return LearnedMask(
        indices=MaskIndices(ids_keep=ids_keep, ids_restore=ids_restore, mask=hard),
        weights=hard + hard * (flowing - flowing.detach()),
        relaxed=relaxed,
        learned=learned,
        scores=standard.detach(),
    )


def positional_entropy(masks: torch.Tensor) -> torch.Tensor:
    """How evenly a batch's masks (B, L), hard or relaxed, spread over the L positions: the entropy of the positions'
    share of the batch's mask, over log L. 1: every position equally often; 0: always the same one."""
    share = masks.float().sum(dim=0)
    share = share / share.sum().clamp_min(1e-12)
    return -(share * torch.log(share.clamp_min(1e-12))).sum() / math.log(masks.shape[1])


def positional_imbalance(masks: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """How unevenly a batch's masks (B, L), hard or relaxed, fall on the L positions: the variance over positions of
    each position's masking frequency f_l, over the largest it can be at their mean rate m, m (1 - m). 0: every
    position is masked equally often; 1: each position is always masked or never. It counts a position that is
    never masked (always shown) as much as one that always is, which the entropy of the masked positions barely
    notices. `counted` (B, L) bool: the entries that count (learned masks: not the random share)."""
    masks = masks.float()
    if counted is None:
        frequency = masks.mean(dim=0)
    else:
        weight = counted.float()
        frequency = (masks * weight).sum(dim=0) / weight.sum(dim=0).clamp_min(1.0)
    rate = frequency.mean()
    return ((frequency - rate) ** 2).mean() / (rate * (1 - rate)).clamp_min(1e-12)


def foreground_patches(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, L) bool: the patches that differ from the image's background more than the image's average patch does.
    The background is the mean colour of the image's outermost pixel ring, which suits objects on a plain ground
    (the built-in digits), not cluttered photographs. Used to watch learned masks, not to make them."""
    images = pixel_values.float()
    ring = torch.cat([images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1).mean(
        dim=-1
    )  # (B, C)
    distance = (images - ring[..., None, None]).abs().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    per_patch = F.avg_pool2d(distance, patch_size).flatten(1)  # (B, L)
    return per_patch > per_patch.mean(dim=1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------------
# A strategy with its parameters, as a config describes it
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskingSpec:
    """A masking strategy and its parameters, read off a config by `from_config`; `sample` draws one image's mask,
    `sample_batch` a batch's. `scale` is SimMIM's mask patch size in model patches."""

    strategy: str = "random"
    mask_ratio: float = 0.75
    scale: int = 1
    min_num_patches: int = 16
    max_num_patches: int | None = None
    min_aspect: float = 0.3

    @classmethod
    def from_config(cls, config) -> MaskingSpec:
        mask_patch_size = getattr(config, "mask_patch_size", None) or config.patch_size
        return cls(
            strategy=config.mask_strategy,
            mask_ratio=config.mask_ratio,
            scale=mask_patch_size // config.patch_size,
            min_num_patches=(
                config.mask_min_num_patches
                if config.mask_min_num_patches is not None
                # BEiT's 16, or everything mask_ratio masks where that is fewer
                else min(16, num_masked_patches(math.prod(config.grid_size), config.mask_ratio))
            ),
            max_num_patches=config.mask_max_num_patches,
            min_aspect=config.mask_min_aspect,
        )

    def sample(self, grid_size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
        """(rows * cols,) boolean mask for one image."""
        if self.strategy not in MASK_STRATEGIES:
            raise ValueError(
                f"mask_strategy={self.strategy!r} cannot be drawn from a generator: one of {tuple(MASK_STRATEGIES)} "
                "(learned masks come from the model's mask model)"
            )
        return MASK_STRATEGIES[self.strategy](self, grid_size, generator)

    def sample_batch(
        self,
        batch_size: int,
        grid_size: tuple[int, int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(batch_size, rows * cols) boolean masks, one independent draw per image."""
        masks = torch.stack([self.sample(grid_size, generator) for _ in range(batch_size)])
        return masks.to(device) if device is not None else masks

    def num_masked(self, grid_size: tuple[int, int]) -> int:
        """Patches every mask of this spec covers on `grid_size`."""
        rows, cols = grid_size
        if self.strategy == "mask_patch":
            squares = (rows // self.scale) * (cols // self.scale)
            return math.ceil(squares * self.mask_ratio) * self.scale**2
        if self.strategy == "central":
            return int(central_mask(grid_size, self.mask_ratio).sum())
        return num_masked_patches(rows * cols, self.mask_ratio)


#: mask_strategy -> how a `MaskingSpec` draws one image's mask over a grid, with a generator.
MASK_STRATEGIES = {
    "random": lambda spec, grid, generator: random_patch_mask(grid, spec.mask_ratio, generator),
    "mask_patch": lambda spec, grid, generator: mask_patch_mask(grid, spec.mask_ratio, spec.scale, generator),
    "block": lambda spec, grid, generator: block_mask(
        grid, spec.mask_ratio, spec.min_num_patches, spec.max_num_patches, spec.min_aspect, None, generator
    ),
    "central": lambda spec, grid, generator: central_mask(grid, spec.mask_ratio),
    "rectangles": lambda spec, grid, generator: rectangles_mask(grid, spec.mask_ratio, generator),
}


def sample_mask(config, grid: tuple[int, int], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """One image's `bool_masked_pos` from the config's strategy: the per-sample inputs of SimMIM and BEiT."""
    return {"bool_masked_pos": config.masking_spec().sample(grid, generator)}


class MaskedMIMConfig(MIMConfig):
    r"""
    Encoder fields (see [`MIMConfig`]) plus the masking fields shared by every method that masks patches. Method
    configs subclass this one and pass their paper's defaults.

    Args:
        mask_strategy (`str`, *optional*, defaults to `"random"`):
            How patches are chosen: `"random"` (MAE), `"mask_patch"` (SimMIM), `"block"` (BEiT), `"central"` or
            `"rectangles"` (Context Encoders); MAE also takes `"learned"` (a mask model's top-scoring patches, see
            [`MAEConfig`]). See `hf_mim.modeling.masking`.
        mask_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of patches masked, strictly between 0 and 1. Every strategy but `"central"` masks exactly
            `L - int(L * (1 - mask_ratio))` patches; `"mask_patch"` masks `ceil(squares * mask_ratio)` whole mask
            patches. At least one patch must end up masked and one visible.
        mask_patch_size (`int`, *optional*):
            `"mask_patch"` only: side in pixels of SimMIM's mask squares; a multiple of `patch_size` dividing both
            sides of `image_size`. Defaults to `patch_size` (plain random patches).
        mask_min_num_patches (`int`, *optional*):
            `"block"` only: smallest block area in patches. Defaults to BEiT's 16, or to the number of patches
            `mask_ratio` masks where that is fewer (a 4x4 grid at 40% masks 7), so that the default fits every
            grid; a value larger than that number is refused.
        mask_max_num_patches (`int`, *optional*):
            `"block"` only: largest block area in patches; by default only the number still to mask limits it.
        mask_min_aspect (`float`, *optional*, defaults to 0.3):
            `"block"` only: blocks' aspect ratio lies in [mask_min_aspect, 1 / mask_min_aspect] (BEiT: 0.3).
    """

    def __init__(
        self,
        mask_strategy: str = "random",
        mask_ratio: float = 0.75,
        mask_patch_size: int | None = None,
        mask_min_num_patches: int | None = None,
        mask_max_num_patches: int | None = None,
        mask_min_aspect: float = 0.3,
        **kwargs,
    ):
        self.mask_strategy = mask_strategy
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size
        self.mask_min_num_patches = mask_min_num_patches
        self.mask_max_num_patches = mask_max_num_patches
        self.mask_min_aspect = mask_min_aspect
        super().__init__(**kwargs)
        self._validate_masking()

    #: strategies a subclass's model supports beyond `MASK_STRATEGIES` (MAE: "learned")
    model_mask_strategies: tuple[str, ...] = ()

    def _validate_masking(self) -> None:
        if self.num_patches < 2:
            sides = to_2tuple(self.image_size)
            fits = max(p for p in range(1, self.patch_size) if all(side % p == 0 and side // p >= 2 for side in sides))
            raise config_error(
                "patch_size",
                self.patch_size,
                f"cuts image_size={self.image_size} into {self.num_patches} patch; masking needs at least 2 (one "
                f"masked, one visible): patch_size={fits} fits",
            )
        allowed = (*MASK_STRATEGIES, *self.model_mask_strategies)
        if self.mask_strategy not in allowed:
            raise config_error("mask_strategy", self.mask_strategy, f"one of {allowed}")
        if not isinstance(self.mask_ratio, (int, float)) or not 0.0 < self.mask_ratio < 1.0:
            raise config_error("mask_ratio", self.mask_ratio, "a float strictly between 0 and 1")
        if self.mask_patch_size is not None:
            rows, cols = self.grid_size
            size = self.mask_patch_size
            if (
                not isinstance(size, int)
                or size < 1
                or size % self.patch_size
                or rows % (size // self.patch_size)
                or cols % (size // self.patch_size)
            ):
                raise config_error(
                    "mask_patch_size",
                    size,
                    f"a multiple of patch_size={self.patch_size} that divides both sides of image_size="
                    f"{self.image_size}",
                )
        if self.mask_min_num_patches is not None:
            self._require_positive_ints("mask_min_num_patches")
        if self.mask_max_num_patches is not None and (
            not isinstance(self.mask_max_num_patches, int)
            or self.mask_max_num_patches < (self.mask_min_num_patches or 1)
        ):
            raise config_error(
                "mask_max_num_patches",
                self.mask_max_num_patches,
                f"None or an int >= mask_min_num_patches={self.mask_min_num_patches}",
            )
        if not isinstance(self.mask_min_aspect, (int, float)) or not 0.0 < self.mask_min_aspect <= 1.0:
            raise config_error("mask_min_aspect", self.mask_min_aspect, "a float in (0, 1]")
        masked = self.masking_spec().num_masked(self.grid_size)
        if self.mask_strategy == "mask_patch" and masked == self.num_patches and self.mask_patch_size:
            raise config_error(
                "mask_patch_size",
                self.mask_patch_size,
                f"its squares are too large for image_size={self.image_size}: masking ratio {self.mask_ratio} of them "
                "covers the whole image; take smaller squares (a multiple of patch_size)",
            )
        if self.mask_strategy == "block" and (self.mask_min_num_patches or 0) > masked:
            raise config_error(
                "mask_min_num_patches",
                self.mask_min_num_patches,
                f"at most the {masked} patches mask_ratio={self.mask_ratio} masks on the {self.grid_size} grid",
            )
        if not 0 < masked < self.num_patches:
            raise config_error(
                "mask_ratio",
                self.mask_ratio,
                f"masks {masked} of {self.num_patches} patches with mask_strategy={self.mask_strategy!r}; at least "
                "one must be masked and one kept",
            )

    def masking_spec(self) -> MaskingSpec:
        return MaskingSpec.from_config(self)


__all__ = [
    "MASK_STRATEGIES",
    "MaskedMIMConfig",
    "MaskingSpec",
    "MaskIndices",
    "LearnedMask",
    "block_mask",
    "foreground_patches",
    "gumbel_from_uniform",
    "learned_mask_counts",
    "learned_masking",
    "positional_entropy",
    "positional_imbalance",
    "bool_mask_to_indices",
    "central_mask",
    "mask_patch_mask",
    "num_masked_patches",
    "num_visible_patches",
    "random_masking",
    "random_patch_mask",
    "rectangles_mask",
    "sample_mask",
]
