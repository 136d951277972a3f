import torch

from hf_mim.modeling.augment import IDENTITY, color_jitter, hsv_to_rgb, rgb_to_hsv, sample_color_jitter


def test_identity_factors_change_nothing():
    images = torch.rand(3, 3, 8, 8)
    out = color_jitter(images, torch.tensor([IDENTITY] * 3))
    torch.testing.assert_close(out, images, rtol=0, atol=1e-6)


def test_hsv_round_trip_and_known_colours():
    images = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(images)), images, rtol=0, atol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb_to_hsv(red).flatten(), torch.tensor([0.0, 1.0, 1.0]))
    # a hue shift of a third of a turn takes red to green, two thirds to blue
    shifted = color_jitter(red, torch.tensor([[1.0, 1.0, 1.0, 1 / 3]]))
    torch.testing.assert_close(shifted.flatten(), torch.tensor([0.0, 1.0, 0.0]), rtol=0, atol=1e-5)


def test_each_factor_does_what_it_says():
    images = torch.full((1, 3, 2, 2), 0.25)
    images[0, 0, 0, 0] = 0.75
    brighter = color_jitter(images, torch.tensor([[2.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(brighter, (images * 2).clamp(0, 1))
    flat = color_jitter(images, torch.tensor([[1.0, 0.0, 1.0, 0.0]]))  # zero contrast: the mean grey everywhere
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))
    gray = color_jitter(images, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))  # zero saturation: equal channels
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


def test_sampled_factors_follow_the_seed_and_ranges():
    a = [sample_color_jitter(torch.Generator().manual_seed(s)) for s in range(200)]
    b = [sample_color_jitter(torch.Generator().manual_seed(s)) for s in range(200)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    stacked = torch.stack(a)
    identity = (stacked == torch.tensor(IDENTITY)).all(1)
    assert 0.1 < identity.float().mean() < 0.3  # applied with probability 0.8
    jittered = stacked[~identity]
    assert (jittered[:, :3] >= 0.6).all() and (jittered[:, :3] <= 1.4).all() and (jittered[:, 3].abs() <= 0.1).all()
