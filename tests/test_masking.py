import math

import pytest
import torch

from hf_mim.modeling.losses import reverse_gradient
from hf_mim.modeling.masking import (
    foreground_patches,
    gumbel_from_uniform,
    learned_mask_counts,
    learned_masking,
    num_masked_patches,
    num_visible_patches,
    positional_entropy,
    positional_imbalance,
    random_masking,
)


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


# ----------------------------------------------------------------------------------------------------------
# Learned masks (MAE's mask_strategy="learned")
# ----------------------------------------------------------------------------------------------------------

NO_GUMBEL = math.exp(-1.0)  # uniform noise whose Gumbel transform is exactly 0


def test_gumbel_from_uniform_is_the_inverse_cdf():
    u = torch.tensor([NO_GUMBEL, 0.5, 0.0, 1.0])
    g = gumbel_from_uniform(u)
    assert g[0].abs() < 1e-6 and g[1] == pytest.approx(-math.log(math.log(2.0)))
    assert torch.isfinite(g).all()  # the ends are clamped, not infinite


def test_learned_masking_hand_computed():
    """8 patches at ratio 0.5: 4 masked, 1 of them at random (the highest noise), 3 by score (the top scores among
    the rest, with the Gumbel noise at exactly 0)."""
    scores = torch.tensor([[0.0, 7.0, 1.0, 6.0, 2.0, 5.0, 3.0, 4.0]])
    noise = torch.tensor([[0.1, 0.9, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])  # patch 1, the top score, is the random one
    out = learned_masking(scores, 0.5, 0.25, 1.0, noise=noise, score_noise=torch.full((1, 8), NO_GUMBEL))
    assert out.indices.mask.tolist() == [[0, 1, 0, 1, 0, 1, 0, 1]]
    assert out.learned.tolist() == [[False, False, False, True, False, True, False, True]]  # 6, 5, 4: not patch 1
    assert out.indices.ids_keep.tolist() == [[0, 2, 4, 6]]
    assert torch.equal(out.weights, out.indices.mask)
    # relaxed: sigmoid of the standardised score minus the threshold between the 3rd and 4th of the others
    standard = (scores - scores.mean()) / scores.var().add(1e-6).sqrt()
    threshold = (standard[0, 7] + standard[0, 6]) / 2
    expected = torch.sigmoid(standard - threshold).masked_fill(noise == 0.9, 0.0)
    torch.testing.assert_close(out.relaxed, expected)
    torch.testing.assert_close(out.scores, standard)


@pytest.mark.parametrize("length, ratio, share", [(196, 0.75, 0.25), (64, 0.75, 0.0), (16, 0.5, 0.5), (10, 0.33, 0.2)])
def test_learned_masking_counts_are_exact_and_deterministic(length, ratio, share):
    g = torch.Generator().manual_seed(0)
    scores, noise, score_noise = (torch.rand(4, length, generator=g) for _ in range(3))
    out = learned_masking(scores, ratio, share, 0.25, noise=noise, score_noise=score_noise)
    randomly, by_score = learned_mask_counts(length, ratio, share)
    assert randomly + by_score == num_masked_patches(length, ratio)
    assert (out.indices.mask.sum(1) == randomly + by_score).all() and (out.learned.sum(1) == by_score).all()
    # the random share is exactly the highest-noise patches
    at_random = out.indices.mask.bool() & ~out.learned
    if randomly:
        assert torch.equal(
            at_random.nonzero(), torch.zeros_like(at_random).scatter_(1, noise.topk(randomly).indices, True).nonzero()
        )
    assert out.indices.ids_keep.shape == (4, num_visible_patches(length, ratio))
    again = learned_masking(scores, ratio, share, 0.25, noise=noise, score_noise=score_noise)
    assert torch.equal(again.indices.mask, out.indices.mask) and torch.equal(again.relaxed, out.relaxed)


def test_learned_masking_follows_the_scores_more_at_lower_temperature():
    """Gumbel top-k samples: a patch's chance grows with its score. Over many draws the top-scoring patches are
    masked more often, and more so at a lower temperature; at a high temperature the masks are nearly uniform."""
    length, draws = 16, 4000
    scores = torch.linspace(-1, 1, length).expand(draws, length)
    g = torch.Generator().manual_seed(0)
    frequency = {}
    for temperature in (0.1, 1.0, 100.0):
        noise, score_noise = torch.rand(draws, length, generator=g), torch.rand(draws, length, generator=g)
        out = learned_masking(scores, 0.5, 0.0, temperature, noise=noise, score_noise=score_noise)
        frequency[temperature] = out.indices.mask.mean(0)
    assert frequency[0.1][-4:].min() > 0.99 and frequency[0.1][:4].max() < 0.01
    assert 0.6 < frequency[1.0][-1] < 0.99 and 0.01 < frequency[1.0][0] < 0.4
    assert (frequency[100.0] - 0.5).abs().max() < 0.05


def test_learned_masking_gradient_raises_the_scores_of_masked_patches_harder_than_average():
    """Straight-through: the loss, a mean of per-patch errors weighted by `weights`, reaches the scores through the
    masked patches' weights, with derivative (error - loss) / M. Through a gradient reversal, a descent step on the
    scores raises a masked patch harder to reconstruct than the average and lowers an easier one."""
    scores = torch.zeros(1, 6, requires_grad=True)
    score_noise = torch.tensor([[0.9, 0.8, 0.7, 0.2, 0.3, 0.4]])  # patches 0, 1, 2 masked by score
    out = learned_masking(
        scores, 0.5, 0.0, 1.0, noise=torch.rand(1, 6), score_noise=score_noise, reverse=lambda x: reverse_gradient(x)
    )
    assert out.indices.mask.tolist() == [[1, 1, 1, 0, 0, 0]]
    errors = torch.tensor([[3.0, 1.0, 2.0, 9.0, 9.0, 9.0]])  # the visible patches' errors must not count
    loss = (out.weights * errors).sum() / out.weights.sum()
    assert loss.item() == 2.0
    loss.backward()
    stepped = scores.detach() - 0.1 * scores.grad
    assert stepped[0, 0] > stepped[0, 2] > stepped[0, 1]  # error 3 above the mean 2, 2 at it, 1 below


def test_learned_masking_refuses_bad_inputs():
    scores = torch.rand(2, 8)
    with pytest.raises(ValueError, match="score_noise must have shape"):
        learned_masking(scores, 0.5, 0.0, 1.0, noise=torch.rand(2, 8), score_noise=torch.rand(2, 7))
    with pytest.raises(ValueError, match="leaves no patch to the scores"):
        learned_masking(scores, 0.25, 0.9, 1.0, noise=torch.rand(2, 8), score_noise=torch.rand(2, 8))


def test_positional_entropy_hand_computed():
    same = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]])
    spread = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]])
    half = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])  # two of four positions, equally: log 2 / log 4
    assert positional_entropy(same) == 0.0
    assert positional_entropy(spread) == pytest.approx(1.0)
    assert positional_entropy(half) == pytest.approx(0.5)


def test_positional_diversity_penalty_spreads_collapsed_masks():
    """Scores that mask the same places in every image: descending 1 - entropy of the relaxed masks spreads them."""
    g = torch.Generator().manual_seed(0)
    scores = torch.linspace(0, 1, 16).repeat(8, 1).add(torch.randn(8, 16, generator=g) * 0.01).requires_grad_()
    optimizer = torch.optim.Adam([scores], lr=0.05)
    entropies = []
    for _ in range(60):
        noise, score_noise = torch.rand(8, 16, generator=g), torch.full((8, 16), NO_GUMBEL)
        out = learned_masking(scores, 0.5, 0.0, 0.25, noise=noise, score_noise=score_noise)
        entropies.append(float(positional_entropy(out.learned)))
        optimizer.zero_grad()
        (1 - positional_entropy(out.relaxed)).backward()
        optimizer.step()
    assert entropies[0] == pytest.approx(0.75)  # the same 8 of 16 positions in every image: log 8 / log 16
    assert entropies[-1] > 0.9


def test_foreground_patches_of_a_bright_shape_on_a_dark_ground():
    images = torch.full((1, 3, 16, 16), -1.0)
    images[..., 4:8, 8:16] = 1.0  # patches (1, 2) and (1, 3) of a 4 x 4 grid of 4 px patches
    assert foreground_patches(images, 4).view(4, 4).nonzero().tolist() == [[1, 2], [1, 3]]
    images[..., 0, :] = 1.0  # a bright top edge moves the background estimate, not which patches stand out most
    assert foreground_patches(images, 4).view(4, 4)[1, 2:].all()


def test_positional_imbalance_hand_computed():
    always = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]])  # frequencies 1, 1, 0, 0 at rate 1/2: the most uneven
    even = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]])
    mixed = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])  # 1, 1/2, 1/2, 0: variance 1/8 over 1/4
    assert positional_imbalance(always) == 1.0 and positional_imbalance(even) == 0.0
    assert positional_imbalance(mixed) == pytest.approx(0.5)
    # only the counted entries: position 0 masked in its one counted image, position 1 in none of two
    counted = torch.tensor([[True, True], [False, True]])
    assert positional_imbalance(torch.tensor([[1, 0], [1, 0]]), counted) == pytest.approx(1.0)
