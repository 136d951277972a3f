import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoConfig, AutoModel

from hf_mim import VisualTokenizer, VisualTokenizerConfig
from hf_mim.modeling.tokenizer import EMAVectorQuantizer, GumbelQuantizer

TINY = dict(image_size=16, patch_size=4, vocab_size=16, embedding_dim=8, hidden_channels=8)


def tiny(**overrides) -> VisualTokenizerConfig:
    return VisualTokenizerConfig(**{**TINY, **overrides})


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(image_size=24, patch_size=0), "patch_size"),
        (dict(image_mean="0.5"), "image_mean"),
        (dict(image_size=18), "image_size"),
        (dict(quantizer="fsq"), "quantizer"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(vocab_size=1), "vocab_size"),
        (dict(gumbel_temperature=0.0), "gumbel_temperature"),
        (dict(image_mean=[0.5]), "image_mean"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        tiny(**overrides)


def test_every_config_field_is_documented():
    from transformers import PretrainedConfig

    fields = set(tiny().to_dict()) - set(PretrainedConfig().to_dict())
    assert not [f for f in fields if f"{f} (`" not in VisualTokenizerConfig.__doc__]


@pytest.mark.parametrize("quantizer", ["vq_ema", "gumbel"])
def test_tokens_lie_on_the_vit_patch_grid(quantizer):
    model = VisualTokenizer(tiny(quantizer=quantizer)).eval()
    pixels = torch.randn(3, 3, 16, 16)
    out = model(pixel_values=pixels)
    assert out.token_ids.shape == (3, 4, 4) and out.reconstruction.shape == pixels.shape
    ids = model.get_codebook_indices(pixels)
    assert ids.shape == (3, 16) and ids.dtype == torch.long
    assert torch.equal(ids, out.token_ids.flatten(1)) and 0 <= ids.min() and ids.max() < 16
    assert model.decode_ids(ids).shape == pixels.shape
    assert model.get_codebook_indices(torch.randn(1, 3, 24, 32)).shape == (1, 6 * 8)  # any multiple of the patch
    with pytest.raises(ValueError, match="not divisible"):
        model.get_codebook_indices(torch.randn(1, 3, 18, 16))


def test_nearest_code_and_ema_update_on_a_hand_computed_case():
    config = tiny(vocab_size=2, embedding_dim=2, ema_decay=0.5, ema_epsilon=1e-12, dead_code_threshold=0.0)
    quantizer = EMAVectorQuantizer(config).train()
    quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    quantizer.cluster_size.fill_(1.0)
    quantizer.embed_sum.copy_(quantizer.embedding)
    quantizer.initialized.fill_(True)
    z = torch.tensor([[1.0, 2.0], [3.0, 0.0], [9.0, 9.0]]).t().reshape(1, 2, 1, 3)  # (B, D, h, w)
    quantized, ids, commitment, perplexity, usage = quantizer(z)
    assert ids.tolist() == [[[0, 0, 1]]]
    # counts: code 0 twice, code 1 once. EMA at decay 0.5: cluster (1.5, 1.0); sums (0.5*0 + 0.5*(4, 2), 0.5*(10,
    # 10) + 0.5*(9, 9)) = ((2, 1), (9.5, 9.5)); Laplace smoothing with eps ~ 0 leaves the counts as they are.
    torch.testing.assert_close(quantizer.cluster_size, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(quantizer.embedding, torch.tensor([[2.0 / 1.5, 1.0 / 1.5], [9.5, 9.5]]))
    # the forward used the codebook from before the update; commitment = 0.25 * mean squared distance
    torch.testing.assert_close(quantized, torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]]).t().reshape(1, 2, 1, 3))
    expected_commitment = 0.25 * (1 + 4 + 9 + 0 + 1 + 1) / 6
    torch.testing.assert_close(commitment, torch.tensor(expected_commitment))
    p = torch.tensor([2 / 3, 1 / 3])
    torch.testing.assert_close(perplexity, torch.exp(-(p * p.log()).sum()))
    assert usage.item() == 1.0


def test_straight_through_gradient_reaches_the_encoder():
    model = VisualTokenizer(tiny()).train()
    model(pixel_values=torch.randn(2, 3, 16, 16)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_first_training_batch_initialises_the_codebook_from_encoder_outputs():
    model = VisualTokenizer(tiny(vocab_size=8, dead_code_threshold=0.0)).train()
    assert not bool(model.quantizer.initialized)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        z = model.encoder(pixels).permute(0, 2, 3, 1).reshape(-1, 8)
        model.quantizer.decay = 1.0  # freeze the moving averages, to look at the initial codebook itself
        model(pixel_values=pixels)
    assert bool(model.quantizer.initialized)
    for code in model.quantizer.embedding:
        assert (z - code).abs().amax(1).min() < 1e-5, "a code that is not one of the batch's encoder outputs"


def test_dead_codes_are_restarted_on_batch_vectors():
    config = tiny(vocab_size=4, embedding_dim=2, dead_code_threshold=0.3, ema_decay=0.9)
    quantizer = EMAVectorQuantizer(config).train()
    quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0], [-50.0, 50.0]]))
    quantizer.cluster_size.copy_(torch.tensor([5.0, 5.0, 0.3, 5.0]))
    quantizer.embed_sum.copy_(quantizer.embedding * quantizer.cluster_size[:, None])
    quantizer.initialized.fill_(True)
    z = torch.tensor([[0.1, 0.0], [0.9, 1.1], [0.0, 0.2], [1.0, 0.8]]).t().reshape(1, 2, 2, 2)
    quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    # code 2 was dead (0.3 * 0.9 < 0.3): it now sits on one of the batch's vectors with a count of 2 * 0.3
    assert any(torch.allclose(quantizer.embedding[2], row) for row in flat)
    assert quantizer.cluster_size[2].item() == pytest.approx(0.6)
    # code 3 was unused but alive (5 * 0.9 = 4.5): it keeps its place
    torch.testing.assert_close(quantizer.embedding[3], torch.tensor([-50.0, 50.0]), rtol=1e-4, atol=1e-4)


def test_get_codebook_indices_is_deterministic_and_leaves_the_codebook_alone():
    model = VisualTokenizer(tiny()).train()
    model(pixel_values=torch.randn(4, 3, 16, 16))  # initialise
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pixels = torch.randn(2, 3, 16, 16)
    a, b = model.get_codebook_indices(pixels), model.get_codebook_indices(pixels)
    assert torch.equal(a, b) and model.quantizer.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_gumbel_temperature_anneals_and_kl_vanishes_at_uniform_logits():
    config = tiny(
        quantizer="gumbel",
        gumbel_temperature=1.0,
        gumbel_temperature_min=0.0625,
        gumbel_anneal_steps=100,
        kl_weight=1.0,
    )
    model = VisualTokenizer(config)
    assert model.quantizer.temperature.item() == 1.0
    model.set_training_step(50)
    assert abs(model.quantizer.temperature.item() - (0.0625 + 0.5 * 0.9375)) < 1e-6
    model.set_training_step(500)
    assert abs(model.quantizer.temperature.item() - 0.0625) < 1e-7
    quantizer = GumbelQuantizer(config).eval()
    _, ids, kl, _, _ = quantizer(torch.zeros(1, 16, 2, 2))
    assert abs(kl.item()) < 1e-6
    logits = torch.full((1, 16, 1, 1), -10.0)
    logits[0, 3] = 10.0
    _, ids, kl, _, _ = quantizer(logits)
    assert ids.item() == 3 and abs(kl.item() - math.log(16)) < 1e-3  # a one-hot q is log(V) from uniform


def test_training_lowers_the_reconstruction_error_and_uses_the_codebook():
    torch.manual_seed(0)
    model = VisualTokenizer(tiny(vocab_size=32)).train()
    # a small dataset with structure: smooth random blobs
    pixels = torch.nn.functional.interpolate(torch.randn(32, 3, 4, 4), size=16, mode="bilinear")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = model(pixel_values=pixels)
        first = first if first is not None else out.reconstruction_loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = model(pixel_values=pixels)
    assert final.reconstruction_loss.item() < 0.5 * first
    assert final.perplexity.item() > 4 and final.codebook_usage.item() > 0.25


def test_save_load_and_auto_classes(tmp_path):
    model = VisualTokenizer(tiny()).train()
    model(pixel_values=torch.randn(2, 3, 16, 16))
    model.save_pretrained(tmp_path)
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= set(os.listdir(tmp_path))
    assert type(AutoConfig.from_pretrained(tmp_path)) is VisualTokenizerConfig
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert type(reloaded) is VisualTokenizer
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    pixels = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.get_codebook_indices(pixels), reloaded.get_codebook_indices(pixels))


def _ema_worker(rank: int, init_file: str, result_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same starting codebook on both ranks
        quantizer = _quantizer_for_sync_test()
        z = torch.randn(2, 4, 4, 2, generator=torch.Generator().manual_seed(100))[rank].permute(2, 0, 1)[None]
        quantizer(z)
        torch.save({k: v.clone() for k, v in quantizer.state_dict().items()}, f"{result_file}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def _quantizer_for_sync_test() -> EMAVectorQuantizer:
    config = tiny(vocab_size=6, embedding_dim=2, ema_decay=0.8, dead_code_threshold=0.3)
    quantizer = EMAVectorQuantizer(config).train()
    quantizer.embedding.copy_(torch.randn(6, 2))
    quantizer.cluster_size.fill_(1.0)
    quantizer.embed_sum.copy_(quantizer.embedding)
    quantizer.initialized.fill_(True)
    return quantizer


def test_codebook_update_across_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    """Codebook statistics are summed over ranks: two processes each seeing half the batch end with the codebook
    one process computes on the whole batch, identical on both ranks."""
    mp.spawn(_ema_worker, args=(str(tmp_path / "init"), str(tmp_path / "state")), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"state.{r}") for r in (0, 1))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    torch.manual_seed(0)
    single = _quantizer_for_sync_test()
    both = torch.randn(2, 4, 4, 2, generator=torch.Generator().manual_seed(100)).reshape(8, 4, 2)
    single(both.permute(2, 0, 1)[None])  # (1, D, 8, 4): both halves, one process
    for key in ("cluster_size", "embed_sum", "embedding"):
        dead = single.cluster_size < 0.3
        torch.testing.assert_close(rank0[key][~dead], single.state_dict()[key][~dead], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_keeps_the_quantizer_in_float32():
    model = VisualTokenizer(tiny(vocab_size=64)).train()
    pixels = torch.randn(8, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixel_values=pixels)
    assert torch.isfinite(out.loss) and model.quantizer.embedding.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        z = model.encoder(pixels).float()
        expected = model.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, 8))  # fp32, no autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ids = model.quantizer(z)[1]
    assert torch.equal(ids.flatten(), expected)


def test_trains_with_transformers_trainer(tmp_path):
    from transformers import Trainer

    from .model_tester import PixelsOnly, trainer_args

    model = VisualTokenizer(tiny())
    trainer = Trainer(model=model, args=trainer_args(tmp_path), train_dataset=PixelsOnly(16, shape=(3, 16, 16)))
    result = trainer.train()
    assert result.global_step == 4 and bool(model.quantizer.initialized)


@pytest.mark.parametrize("patch_size, factors", [(4, [2, 2]), (6, [2, 3]), (7, [7]), (12, [2, 2, 3]), (9, [3, 3])])
def test_any_patch_size_gives_a_token_grid_aligned_with_the_vit(patch_size, factors):
    """One stage per prime factor of the patch size, 2s first (powers of two keep their VQGAN stages), so a ViT of
    any patch size gets one token per patch, and the decoder gives the image back at its size."""
    from hf_mim.modeling.tokenizer import downsampling_factors

    assert downsampling_factors(patch_size) == factors
    config = tiny(image_size=patch_size * 3, patch_size=patch_size)
    model = VisualTokenizer(config).eval()
    pixels = torch.randn(2, 3, patch_size * 3, patch_size * 3)
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    assert out.token_ids.shape == (2, 3, 3) and out.reconstruction.shape == pixels.shape
    assert len(out.hidden_states) == len(factors) + 2  # the stem, each stage, the last residual block
    assert [h.shape[-1] for h in out.hidden_states] == [
        patch_size * 3 // math.prod(factors[:i]) for i in range(len(factors) + 1)
    ] + [3]
