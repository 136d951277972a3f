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
