import pytest
import torch

from hf_mim.modeling.losses import masked_mse_loss, normalize_patches, per_image_masked_mse_loss


def test_masked_mse_on_a_hand_computed_case():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # patch 0: (1 + 4) / 2 = 2.5; patch 2: (4 + 4) / 2 = 4; patch 1 is visible and ignored
    assert masked_mse_loss(pred, target, mask).item() == 3.25


def test_masked_mse_is_float32_for_half_inputs():
    pred, target = torch.randn(2, 4, 6).bfloat16(), torch.randn(2, 4, 6).bfloat16()
    loss = masked_mse_loss(pred, target, torch.ones(2, 4))
    assert loss.dtype == torch.float32


def test_normalize_patches_on_a_hand_computed_case():
    patch = torch.tensor([[[1.0, 2.0, 3.0]]])
    # mean 2, unbiased variance 1
    expected = torch.tensor([[[-1.0, 0.0, 1.0]]]) / (1.0 + 1e-6) ** 0.5
    torch.testing.assert_close(normalize_patches(patch), expected, rtol=0, atol=1e-7)
    flat = torch.full((1, 1, 4), 7.0)  # a flat patch stays finite thanks to eps
    assert torch.equal(normalize_patches(flat), torch.zeros(1, 1, 4))


def test_masked_pixel_l1_on_a_hand_computed_case():
    from hf_mim.modeling.losses import masked_pixel_l1_loss

    # one 1-channel 4x4 image of 2x2 patches; only patch 1 (top right) is masked
    target = torch.zeros(1, 1, 4, 4)
    pred = torch.zeros(1, 1, 4, 4)
    pred[0, 0, 0:2, 2:4] = torch.tensor([[1.0, -2.0], [3.0, 0.0]])  # |error| sums to 6 under the mask
    pred[0, 0, 2:4, 0:2] = 100.0  # visible: ignored
    mask = torch.tensor([[False, True, False, False]])
    expected = 6.0 / (4 + 1e-5) / 1
    assert abs(masked_pixel_l1_loss(pred, target, mask, patch_size=2).item() - expected) < 1e-7
    # channels divide the normaliser: the same error on each of 3 channels gives the same loss
    loss3 = masked_pixel_l1_loss(pred.expand(1, 3, 4, 4), target.expand(1, 3, 4, 4), mask, patch_size=2)
    assert abs(loss3.item() - expected) < 1e-6


def test_masked_cross_entropy_on_a_hand_computed_case():
    import math

    from hf_mim.modeling.losses import masked_cross_entropy

    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    # position 0: -log(1/2); position 1: -log(3/4); position 2 is visible
    expected = (math.log(2.0) - math.log(0.75)) / 2
    assert abs(masked_cross_entropy(logits, labels, mask).item() - expected) < 1e-6


def test_token_info_nce_on_a_hand_computed_case():
    import math

    from hf_mim.modeling.losses import token_info_nce

    # B = 2 images, L = 1 position, P = 2: keys are the two axes; queries hit their own key exactly (cos 1) and the
    # other one at cos 0. With temperature 0.5 each query's logits are (2, 0): loss = -log(e^2 / (e^2 + 1)).
    keys = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    queries = torch.tensor([[[3.0, 0.0]], [[0.0, 0.5]]])  # lengths do not matter: cosine similarity
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert abs(token_info_nce(queries, keys, temperature=0.5).item() - expected) < 1e-6
    # negatives from the other positions of the same image: the same numbers with the axes as positions
    assert abs(token_info_nce(queries.transpose(0, 1), keys.transpose(0, 1), 0.5, "positions").item() - expected) < 1e-6
    # swapping the keys makes every positive the orthogonal one
    swapped = -math.log(1 / (math.exp(2) + 1))
    assert abs(token_info_nce(queries, keys.flip(0), temperature=0.5).item() - swapped) < 1e-6


def test_byol_loss_on_a_hand_computed_case():
    from hf_mim.modeling.losses import byol_loss

    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])
    # cos = 1 and -1/sqrt(2): (0 + 2 + sqrt(2)) / 2
    assert abs(byol_loss(p, z).item() - (2 + 2**0.5) / 2) < 1e-6


def test_per_image_masked_mse_hand_computed():
    pred = torch.zeros(2, 3, 1)
    target = torch.tensor([[[1.0], [2.0], [3.0]], [[2.0], [0.0], [4.0]]])  # squared errors 1, 4, 9 and 4, 0, 16
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    assert per_image_masked_mse_loss(pred, target, mask) == pytest.approx(((1 + 4) / 2 + (0 + 16) / 2) / 2)
    assert per_image_masked_mse_loss(pred, target, mask) == pytest.approx(masked_mse_loss(pred, target, mask))
    uneven = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])  # then the two differ: each image counts once
    assert per_image_masked_mse_loss(pred, target, uneven) == pytest.approx((14 / 3 + 16) / 2)
    weights = mask.clone().requires_grad_()
    per_image_masked_mse_loss(pred, target, weights).backward()
    # (e - the image's loss) / (B * the image's weight): image 0's loss is 2.5, image 1's 8
    torch.testing.assert_close(weights.grad, torch.tensor([[-1.5, 1.5, 6.5], [-4.0, -8.0, 8.0]]) / 4)
