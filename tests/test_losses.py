import torch

from hf_mim.modeling.losses import masked_mse_loss, normalize_patches


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
