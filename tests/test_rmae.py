import pytest
import torch

from hf_mim import RMAEConfig, RMAEForImageClassification, RMAEForPreTraining, RMAEModel
from hf_mim.modeling.losses import normalize_patches

from . import test_mae
from .model_tester import ModelTesterMixin
from .test_mae import TINY


def tiny_config(**overrides) -> RMAEConfig:
    return RMAEConfig(**{**TINY, **overrides})


class TestRMAE(ModelTesterMixin):
    config_class = RMAEConfig
    encoder_class = RMAEModel
    pretraining_class = RMAEForPreTraining
    classification_class = RMAEForImageClassification

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    pretraining_inputs = test_mae.TestMAE.pretraining_inputs

    def check_pretraining_outputs(self, config, outputs, inputs):
        test_mae.TestMAE.check_pretraining_outputs(self, config, outputs, inputs)
        assert outputs.full_logits.shape == outputs.logits.shape


@pytest.mark.parametrize("weight", [0.0, -1.0])
def test_autoencoding_weight_must_be_positive(weight):
    with pytest.raises(ValueError, match="^autoencoding_weight="):
        tiny_config(autoencoding_weight=weight)


def _parts(model, pixels, noise):
    latent, mask, ids_restore, grid, _ = model.forward_encoder(pixels, noise)
    return model.forward_decoder(latent, ids_restore, grid), model.forward_full(pixels), mask


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_is_the_relaxed_objective(norm_pix_loss):
    torch.manual_seed(0)
    model = RMAEForPreTraining(tiny_config(autoencoding_weight=0.5, norm_pix_loss=norm_pix_loss)).eval()
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        out = model(pixel_values=pixels, noise=noise)
        masked, full, mask = _parts(model, pixels, noise)
    target = model.patchify(pixels)
    target = normalize_patches(target) if norm_pix_loss else target
    consistency = (((masked - full) ** 2).mean(-1) * mask).sum() / mask.sum()
    autoencoding = ((full - target) ** 2).mean()
    torch.testing.assert_close(out.consistency_loss, consistency)
    torch.testing.assert_close(out.autoencoding_loss, autoencoding)
    torch.testing.assert_close(out.loss, consistency + 0.5 * autoencoding)
    torch.testing.assert_close(out.full_logits, full)


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_stop_gradient_on_the_full_branch(stop_gradient):
    config = tiny_config(stop_gradient_full_branch=stop_gradient)
    torch.manual_seed(0)
    model = RMAEForPreTraining(config).train()
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    model(pixel_values=pixels, noise=noise).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    def manual(detach: bool):
        model.zero_grad()
        masked, full, mask = _parts(model, pixels, noise)
        anchor = full.detach() if detach else full
        target = normalize_patches(model.patchify(pixels))
        loss = (((masked - anchor) ** 2).mean(-1) * mask).sum() / mask.sum() + ((full - target) ** 2).mean()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    same, other = manual(stop_gradient), manual(not stop_gradient)
    for name in got:
        torch.testing.assert_close(got[name], same[name], rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.allclose(got[n], other[n], rtol=1e-4, atol=1e-6) for n in got)
