import pytest
import torch

from hf_mim.modeling.masking import num_visible_patches, random_masking


@pytest.mark.parametrize("length, ratio", [(196, 0.75), (49, 0.75), (16, 0.5), (10, 0.33), (64, 0.9)])
def test_random_masking_masks_exactly_the_requested_count(length, ratio):
    out = random_masking(8, length, ratio, generator=torch.Generator().manual_seed(0))
    keep = int(length * (1 - ratio))
    assert keep == num_visible_patches(length, ratio)
    assert out.mask.shape == (8, length) and out.ids_keep.shape == (8, keep)
    assert (out.mask.sum(1) == length - keep).all()
    # ids_keep are exactly the unmasked patches; ids_restore is a permutation
    for b in range(8):
        assert set(out.ids_keep[b].tolist()) == set((out.mask[b] == 0).nonzero().flatten().tolist())
        assert sorted(out.ids_restore[b].tolist()) == list(range(length))


def test_noise_semantics_match_transformers_vitmae():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    out = random_masking(1, 4, 0.5, noise=noise)
    assert out.ids_keep.tolist() == [[1, 3]]  # the lowest noise, in ascending order
    assert out.mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    # gathering [visible..., masked...] by ids_restore gives grid order back
    shuffled = torch.tensor([[1, 3, 2, 0]])
    assert torch.gather(shuffled, 1, out.ids_restore).tolist() == [[0, 1, 2, 3]]


def test_masks_are_deterministic_under_a_seed_and_differ_across_seeds():
    a = random_masking(4, 49, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_masking(4, 49, 0.75, generator=torch.Generator().manual_seed(3))
    c = random_masking(4, 49, 0.75, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)
    assert not torch.equal(a.mask, c.mask)
    assert not torch.equal(a.mask[0], a.mask[1])  # per-sample masks


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_invalid_ratios_are_rejected(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 16, ratio)


def test_noise_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(1, 16\)"):
        random_masking(1, 16, 0.75, noise=torch.rand(1, 15))


# ----------------------------------------------------------------------------------------------------------------
# Boolean strategies
# ----------------------------------------------------------------------------------------------------------------

from hf_mim.modeling.masking import (  # noqa: E402
    MASK_STRATEGIES,
    MaskingSpec,
    block_mask,
    bool_mask_to_indices,
    central_mask,
    mask_patch_mask,
    num_masked_patches,
    random_patch_mask,
    rectangles_mask,
)

SPECS = {
    "random": MaskingSpec("random", 0.75),
    "mask_patch": MaskingSpec("mask_patch", 0.6, scale=2),
    "block": MaskingSpec("block", 0.4),
    "central": MaskingSpec("central", 0.25),
    "rectangles": MaskingSpec("rectangles", 0.3),
}


def test_every_strategy_has_a_spec_here():
    assert set(SPECS) == set(MASK_STRATEGIES)


@pytest.mark.parametrize("strategy", MASK_STRATEGIES)
@pytest.mark.parametrize("grid", [(14, 14), (8, 8), (6, 10)], ids=str)
def test_each_strategy_masks_its_exact_count_with_the_right_shape(strategy, grid):
    spec = SPECS[strategy]
    g = torch.Generator().manual_seed(0)
    masks = spec.sample_batch(16, grid, generator=g)
    assert masks.shape == (16, grid[0] * grid[1]) and masks.dtype == torch.bool
    expected = spec.num_masked(grid)
    assert masks.sum(1).tolist() == [expected] * 16
    if strategy not in ("mask_patch", "central"):
        assert expected == num_masked_patches(grid[0] * grid[1], spec.mask_ratio)


@pytest.mark.parametrize("strategy", [s for s in MASK_STRATEGIES if s != "central"])
def test_each_random_strategy_is_deterministic_under_a_seed(strategy):
    spec = SPECS[strategy]
    a = spec.sample_batch(8, (14, 14), generator=torch.Generator().manual_seed(5))
    b = spec.sample_batch(8, (14, 14), generator=torch.Generator().manual_seed(5))
    c = spec.sample_batch(8, (14, 14), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) > 1  # per-image draws


def test_simmim_mask_patch_masks_whole_aligned_squares():
    mask = mask_patch_mask((12, 12), 0.6, scale=4, generator=torch.Generator().manual_seed(0)).view(12, 12)
    squares = mask.view(3, 4, 3, 4).permute(0, 2, 1, 3).reshape(9, 16)
    assert ((squares.sum(1) == 0) | (squares.sum(1) == 16)).all()  # each square all masked or all visible
    assert int(squares.all(1).sum()) == 6  # ceil(9 * 0.6), SimMIM's MaskGenerator count
    with pytest.raises(ValueError, match="scale=5"):
        mask_patch_mask((12, 12), 0.6, scale=5)


def _masked_neighbours(mask: torch.Tensor) -> torch.Tensor:
    padded = torch.nn.functional.pad(mask.float()[None, None], (1, 1, 1, 1))[0, 0]
    return padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]


def test_block_masks_are_blocks_and_random_masks_are_not():
    """BEiT's masks are rectangles of >= 16 patches: almost every masked patch has >= 2 masked 4-neighbours,
    which is rare for uniformly random patches at the same ratio."""
    g = torch.Generator().manual_seed(0)
    block, scattered = [], []
    for _ in range(50):
        b = block_mask((14, 14), 0.4, generator=g, exact=False).view(14, 14)
        r = random_patch_mask((14, 14), 0.4, generator=g).view(14, 14)
        block.append((_masked_neighbours(b)[b] >= 2).float().mean())
        scattered.append((_masked_neighbours(r)[r] >= 2).float().mean())
    assert torch.stack(block).mean() > 0.85
    assert torch.stack(scattered).mean() < 0.5


def test_block_masking_without_top_up_follows_beit():
    """BEiT never overshoots, and on 14x14 at 40% its blocks alone land within a few patches of the target."""
    g = torch.Generator().manual_seed(1)
    target = num_masked_patches(196, 0.4)
    counts = [int(block_mask((14, 14), 0.4, generator=g, exact=False).sum()) for _ in range(100)]
    assert max(counts) <= target
    assert min(counts) >= target - 8 and sum(counts) / len(counts) >= 0.98 * target
    # with a minimum block larger than what is left, BEiT stops short; the default tops up to the exact count
    short = block_mask((4, 4), 0.5, min_num_patches=6, generator=torch.Generator().manual_seed(0), exact=False)
    exact = block_mask((4, 4), 0.5, min_num_patches=6, generator=torch.Generator().manual_seed(0))
    assert int(short.sum()) <= 8 and int(exact.sum()) == 8
    assert bool((exact | short).eq(exact).all())  # the top-up only adds patches


def test_central_mask_is_a_centred_square():
    mask = central_mask((14, 14), 0.25).view(14, 14)
    assert int(mask.sum()) == 49
    assert mask[3:10, 3:10].all() and int(mask[3:10, 3:10].sum()) == int(mask.sum())
    assert torch.equal(mask, central_mask((14, 14), 0.25).view(14, 14))
    wide = central_mask((6, 12), 0.25).view(6, 12)  # the grid's aspect ratio
    assert int(wide.sum()) == 3 * 6 and wide[1:4, 3:9].all()


def test_rectangles_are_regions_not_scattered_patches():
    """Context Encoders' random blocks: unions of rectangles, so (as for BEiT's blocks, without their 16-patch
    minimum) most masked patches have masked neighbours, unlike uniformly random patches at the same ratio."""
    g = torch.Generator().manual_seed(0)
    regions, scattered = [], []
    for _ in range(50):
        r = rectangles_mask((14, 14), 0.3, generator=g, exact=False).view(14, 14)
        u = random_patch_mask((14, 14), 0.3, generator=g).view(14, 14)
        regions.append((_masked_neighbours(r)[r] >= 2).float().mean())
        scattered.append((_masked_neighbours(u)[u] >= 2).float().mean())
    assert torch.stack(regions).mean() > 0.7
    assert torch.stack(scattered).mean() < 0.4


def test_bool_mask_to_indices_round_trips():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    out = bool_mask_to_indices(mask)
    assert out.ids_keep.tolist() == [[1, 3], [0, 1]]  # visible, in grid order
    assert torch.equal(out.mask, mask.float())
    shuffled = torch.cat([out.ids_keep, torch.tensor([[0, 2], [2, 3]])], dim=1)
    assert torch.gather(shuffled, 1, out.ids_restore).tolist() == [[0, 1, 2, 3]] * 2
    with pytest.raises(ValueError, match="same count"):
        bool_mask_to_indices(torch.tensor([[True, False, False], [True, True, False]]))
    with pytest.raises(ValueError, match="at least one must be kept"):
        bool_mask_to_indices(torch.ones(2, 3, dtype=torch.bool))
