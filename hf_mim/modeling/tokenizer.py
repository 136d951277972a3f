"""Discrete visual tokenizers for BEiT-style pretraining, trainable here.

BEiT predicts the visual tokens of masked patches; the original borrows DALL-E's tokenizer. `VisualTokenizer` is a
small convolutional autoencoder whose bottleneck is one discrete code per ViT patch: the encoder downsamples by
`patch_size`, so an image maps to a (rows, cols) grid of ids aligned with the ViT's patch grid.

Two quantizers:

- `"vq_ema"`: VQ-VAE (van den Oord et al., 2017) with the codebook learned by exponential moving averages of the
  assigned encoder outputs (the VQ-VAE paper's appendix; Razavi et al., 2019), a commitment loss, codebook
  initialisation from the first batch and restarts of dead codes (Dhariwal et al., 2020) against codebook collapse;
- `"gumbel"`: DALL-E's dVAE relaxation (Ramesh et al., 2021): logits over the vocabulary, a Gumbel-softmax sample
  during training with an annealed temperature, an optional KL term towards the uniform prior, argmax ids.

Under DDP the codebook statistics are summed across processes before every EMA update and restarts are broadcast
from rank 0, so every rank keeps the same codebook (buffers are not averaged by DDP).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers import initialization as init
from transformers.utils import ModelOutput

from .backbone import ImageFieldsMixin, config_error
from .base import MIMPreTrainedModel
from .spec import MethodCard, MethodSpec, Picture, Recipe


@dataclass
class VisualTokenizerOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Training loss: `reconstruction_loss + quantization_loss`.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Decoded images, in the normalised space of `pixel_values`.
        token_ids (`torch.LongTensor` of shape `(batch_size, rows, cols)`):
            The discrete code of every patch, on the ViT patch grid.
        reconstruction_loss (`torch.FloatTensor` of shape `()`):
            Mean squared error between `reconstruction` and `pixel_values`.
        quantization_loss (`torch.FloatTensor` of shape `()`):
            VQ: commitment loss (`commitment_cost` * ||z - sg(e)||^2). Gumbel: `kl_weight` * KL(q || uniform).
        perplexity (`torch.FloatTensor` of shape `()`):
            exp(entropy) of the batch's code histogram (across processes when distributed): how many codes are in
            effective use, between 1 and `vocab_size`.
        codebook_usage (`torch.FloatTensor` of shape `()`):
            Fraction of the vocabulary the batch used (across processes when distributed).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The encoder's feature maps, `(batch_size, channels, height, width)` each, when
            `output_hidden_states=True`: the stem's, then each downsampling stage's, then the last residual block's
            (at the token grid), as transformers' convolutional models return theirs.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    token_ids: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    quantization_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


QUANTIZERS = ("vq_ema", "gumbel")


class TokenMaps(NamedTuple):
    """What the token picture of a model shows (`picture_tokens`; `hf_mim.model_cards.pictures`).

    token_ids: (B, L) the tokenizer's ids of the images' patches. decoded: the tokenizer's decodings, each
    (B, C, H, W) in the tokenizer's normalisation (`image_mean`, `image_std`). bool_masked_pos, predicted_ids:
    (B, L), the masked patches and the ids predicted for every patch, where a model predicts tokens (BEiT)."""

    token_ids: torch.Tensor
    decoded: list[torch.Tensor]
    image_mean: Sequence[float]
    image_std: Sequence[float]
    bool_masked_pos: torch.Tensor | None = None
    predicted_ids: torch.Tensor | None = None


class VisualTokenizerConfig(ImageFieldsMixin, PretrainedConfig):
    r"""
    Configuration of a [`VisualTokenizer`]. Defaults give a tokenizer for ViT-B/16 at 224 px with BEiT's 8192-token
    vocabulary.

    Args:
        image_size (`int` or `tuple[int, int]`, *optional*, defaults to 224):
            Resolution of the images it is trained on; the token grid is `image_size / patch_size`.
        patch_size (`int`, *optional*, defaults to 16):
            Downsampling factor, one token per `patch_size` x `patch_size` pixels: the ViT's patch size. One stage
            per prime factor: a stride-2 convolution for each factor 2, then a non-overlapping convolution for each
            odd prime (6 px patches: 2 then 3).
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the images.
        vocab_size (`int`, *optional*, defaults to 8192):
            Number of discrete codes (BEiT and DALL-E use 8192).
        embedding_dim (`int`, *optional*, defaults to 32):
            Dimension of each code vector.
        hidden_channels (`int`, *optional*, defaults to 64):
            Width of the first convolutional stage; stage `i` has `hidden_channels * min(2**i, 4)` channels.
        num_res_blocks (`int`, *optional*, defaults to 1):
            Residual blocks per stage, in the encoder and in the decoder.
        quantizer (`str`, *optional*, defaults to `"vq_ema"`):
            `"vq_ema"` (VQ-VAE with an EMA codebook) or `"gumbel"` (DALL-E style Gumbel-softmax dVAE).
        commitment_cost (`float`, *optional*, defaults to 0.25):
            `"vq_ema"`: weight of the commitment loss ||z - sg(e)||^2 (VQ-VAE's beta).
        ema_decay (`float`, *optional*, defaults to 0.99):
            `"vq_ema"`: decay of the codebook's moving averages, in [0, 1).
        ema_epsilon (`float`, *optional*, defaults to 1e-5):
            `"vq_ema"`: Laplace smoothing of the code counts, so that unused codes do not divide by zero.
        dead_code_threshold (`float`, *optional*, defaults to 1.0):
            `"vq_ema"`: a code whose moving-average count (assignments per step, summed over processes) falls
            below this is restarted at a random encoder output of the current batch, with a count of twice the
            threshold. 0 turns restarts off.
        gumbel_temperature (`float`, *optional*, defaults to 1.0):
            `"gumbel"`: initial softmax temperature.
        gumbel_temperature_min (`float`, *optional*, defaults to 0.0625):
            `"gumbel"`: temperature reached at the end of the annealing (DALL-E: 1/16).
        gumbel_anneal_steps (`int`, *optional*, defaults to 10000):
            `"gumbel"`: optimizer steps of the cosine annealing from `gumbel_temperature` to
            `gumbel_temperature_min` (applied by `hf-mim pretrain` through `set_training_step`).
        kl_weight (`float`, *optional*, defaults to 0.0):
            `"gumbel"`: weight of KL(q || uniform) (DALL-E ramps it up to 6.6; 0 leaves it out).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the codebook's initialisation before the first batch re-initialises it
            (`"vq_ema"`), or of the code embeddings (`"gumbel"`).
        image_mean (`list[float]` or `float`, *optional*, defaults to the ImageNet mean):
            Per-channel mean of the normalisation the tokenizer's inputs carry (one float: the same for all).
        image_std (`list[float]` or `float`, *optional*, defaults to the ImageNet standard deviation):
            Per-channel standard deviation, as `image_mean`.
    """

    model_type = "hf_mim_visual_tokenizer"

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        vocab_size: int = 8192,
        embedding_dim: int = 32,
        hidden_channels: int = 64,
        num_res_blocks: int = 1,
        quantizer: str = "vq_ema",
        commitment_cost: float = 0.25,
        ema_decay: float = 0.99,
        ema_epsilon: float = 1e-5,
        dead_code_threshold: float = 1.0,
        gumbel_temperature: float = 1.0,
        gumbel_temperature_min: float = 0.0625,
        gumbel_anneal_steps: int = 10000,
        kl_weight: float = 0.0,
        initializer_range: float = 0.02,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **kwargs,
    ):
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_channels = hidden_channels
        self.num_res_blocks = num_res_blocks
        self.quantizer = quantizer
        self.commitment_cost = commitment_cost
        self.ema_decay = ema_decay
        self.ema_epsilon = ema_epsilon
        self.dead_code_threshold = dead_code_threshold
        self.gumbel_temperature = gumbel_temperature
        self.gumbel_temperature_min = gumbel_temperature_min
        self.gumbel_anneal_steps = gumbel_anneal_steps
        self.kl_weight = kl_weight
        self.initializer_range = initializer_range
        self._set_normalization(image_mean, image_std)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        self._validate_image_fields()
        self._require_positive_ints("vocab_size", "embedding_dim", "hidden_channels")
        if self.vocab_size < 2:
            raise config_error("vocab_size", self.vocab_size, "at least 2 codes")
        if not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 0:
            raise config_error("num_res_blocks", self.num_res_blocks, "a non-negative int")
        if self.quantizer not in QUANTIZERS:
            raise config_error("quantizer", self.quantizer, f"one of {QUANTIZERS}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise config_error("ema_decay", self.ema_decay, "a float in [0, 1)")
        for field in ("commitment_cost", "dead_code_threshold", "kl_weight"):
            if getattr(self, field) < 0:
                raise config_error(field, getattr(self, field), "a non-negative float")
        for field in ("ema_epsilon", "gumbel_temperature", "gumbel_temperature_min"):
            if not getattr(self, field) > 0:
                raise config_error(field, getattr(self, field), "a positive float")
        if not isinstance(self.gumbel_anneal_steps, int) or self.gumbel_anneal_steps < 0:
            raise config_error("gumbel_anneal_steps", self.gumbel_anneal_steps, "a non-negative int")

    def to_fields(self) -> dict:
        """This config's own fields only (no generic `PretrainedConfig` entries such as `id2label`): the form BEiT
        nests in its config, which survives a JSON round trip unchanged."""
        own = inspect.signature(type(self).__init__).parameters
        return {key: value for key, value in self.to_dict().items() if key in own}


# ----------------------------------------------------------------------------------------------------------------
# Distributed helpers: the codebook must stay identical on every rank
# ----------------------------------------------------------------------------------------------------------------


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        torch.distributed.all_reduce(tensor)
    return tensor


def _broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        torch.distributed.broadcast(tensor, src=0)
    return tensor


def _code_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How often each of the `vocab_size` codes occurs in `ids`, as floats. A scatter-add into a fixed-size
    histogram rather than `torch.bincount`, whose output shape depends on the data and so splits a compiled graph."""
    flat = ids.reshape(-1)
    return torch.zeros(vocab_size, device=ids.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))


def _code_statistics(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity (exp of the entropy of the code histogram) and the fraction of codes used."""
    probs = counts / counts.sum().clamp(min=1)
    perplexity = torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())
    return perplexity, (counts > 0).float().mean()


# ----------------------------------------------------------------------------------------------------------------
# Quantizers
# ----------------------------------------------------------------------------------------------------------------


def initial_codebook(config: VisualTokenizerConfig) -> torch.Tensor:
    """The EMA codebook before training's first batch replaces it with encoder outputs: normal draws of std
    `initializer_range` from a generator of its own (seed 0), so that building the quantizer and re-initialising it
    (a model built on the meta device) give the same codes, and the global generator is left alone."""
    generator = torch.Generator().manual_seed(0)
    shape = (config.vocab_size, config.embedding_dim)
    return torch.randn(shape, generator=generator, device="cpu") * config.initializer_range


class EMAVectorQuantizer(nn.Module):
    """Nearest-code quantization with an EMA-learned codebook (buffers, no gradients) and a straight-through
    estimator. (B, D, h, w) -> quantized (B, D, h, w), ids (B, h, w), commitment loss, perplexity, usage."""

    def __init__(self, config: VisualTokenizerConfig):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.decay = config.ema_decay
        self.epsilon = config.ema_epsilon
        self.commitment_cost = config.commitment_cost
        self.dead_code_threshold = config.dead_code_threshold
        vocab, dim = config.vocab_size, config.embedding_dim
        # on the default device and in the default dtype, as a factory function would make it (meta device under
        # transformers' loading, its dtype under from_pretrained(dtype=...))
        like = torch.empty(0)
        self.register_buffer("embedding", initial_codebook(config).to(like.device, like.dtype))
        self.register_buffer("cluster_size", torch.zeros(vocab))
        self.register_buffer("embed_sum", torch.zeros(vocab, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        # float32 whatever the model's dtype (`model.half()` casts buffers too): half-precision distances between
        # nearby codes would pick the wrong one
        codebook, flat = self.embedding.float(), flat.float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None]
        return distances.argmin(dim=1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, D, h, w) code vectors, in the codebook's dtype."""
        return self.embedding[ids].permute(0, 3, 1, 2)

    @torch.no_grad()
    def _restart(self, codes: torch.Tensor, flat: torch.Tensor, count: float) -> None:
        """Set `codes` (a boolean selection) to random rows of `flat`, drawn on rank 0 and broadcast."""
        n = int(codes.sum())
        if n == 0:
            return
        picks = flat[torch.randint(flat.shape[0], (n,), device=flat.device)].clone()
        picks = _broadcast_from_main(picks)
        self.embedding[codes] = picks.to(self.embedding.dtype)
        self.cluster_size[codes] = count
        self.embed_sum[codes] = (picks * count).to(self.embed_sum.dtype)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> None:
        # in float32 (flat is), written back in the buffers' dtype
        sums = _all_reduce_sum(flat.new_zeros(self.embed_sum.shape).index_add_(0, ids, flat))
        self.cluster_size.mul_(self.decay).add_(counts.to(self.cluster_size.dtype), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums.to(self.embed_sum.dtype), alpha=1 - self.decay)
        cluster_size = self.cluster_size.float()
        total = cluster_size.sum()
        smoothed = (cluster_size + self.epsilon) / (total + self.vocab_size * self.epsilon) * total
        self.embedding.copy_(self.embed_sum.float() / smoothed.unsqueeze(1))
        if self.dead_code_threshold > 0:
            self._restart(self.cluster_size < self.dead_code_threshold, flat, 2 * self.dead_code_threshold)

    def forward(self, z: torch.Tensor):
        # fp32 throughout, also under autocast: bf16 distances would pick wrong codes and bias the averages
        with torch.autocast(z.device.type, enabled=False):
            return self._forward(z)

    def _forward(self, z: torch.Tensor):
        batch, dim, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim).float()
        if self.training and not bool(self.initialized):
            # Data-dependent start: codes drawn at random far from the encoder's outputs would never be picked.
            self._restart(torch.ones_like(self.cluster_size, dtype=torch.bool), flat.detach(), 1.0)
            self.initialized.fill_(True)
        ids = self.nearest(flat.detach())
        quantized = self.embedding[ids].float()
        counts = _code_counts(ids, self.vocab_size)
        if self.training:
            counts = _all_reduce_sum(counts)
            self._ema_update(flat.detach(), ids, counts)
        commitment = self.commitment_cost * F.mse_loss(flat, quantized.detach())
        straight_through = flat + (quantized - flat).detach()
        perplexity, usage = _code_statistics(counts)
        quantized = straight_through.view(batch, height, width, dim).permute(0, 3, 1, 2).to(z.dtype)
        return quantized, ids.view(batch, height, width), commitment, perplexity, usage


class GumbelQuantizer(nn.Module):
    """DALL-E's relaxation: logits (B, V, h, w) -> a Gumbel-softmax mixture of code embeddings during training, the
    argmax code at inference. Returns quantized (B, D, h, w), ids (B, h, w), KL loss, perplexity, usage."""

    def __init__(self, config: VisualTokenizerConfig):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.kl_weight = config.kl_weight
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim)
        # a buffer, so that a resumed run continues the annealing where it stopped
        self.register_buffer("temperature", torch.tensor(float(config.gumbel_temperature)))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids).permute(0, 3, 1, 2)

    def forward(self, logits: torch.Tensor):
        with torch.autocast(logits.device.type, enabled=False):
            return self._forward(logits.float())

    def _forward(self, logits: torch.Tensor):
        ids = logits.argmax(dim=1)
        if self.training:
            soft = F.gumbel_softmax(logits, tau=self.temperature, hard=False, dim=1)
            quantized = torch.einsum("bvhw,vd->bdhw", soft, self.embedding.weight)
        else:
            quantized = self.lookup(ids)
        log_q = F.log_softmax(logits, dim=1)
        kl = self.kl_weight * (log_q.exp() * (log_q + math.log(self.vocab_size))).sum(dim=1).mean()
        counts = _code_counts(ids, self.vocab_size)
        if self.training:
            counts = _all_reduce_sum(counts)
        perplexity, usage = _code_statistics(counts)
        return quantized, ids, kl, perplexity, usage


# ----------------------------------------------------------------------------------------------------------------
# Encoder and decoder
# ----------------------------------------------------------------------------------------------------------------


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


def downsampling_factors(patch_size: int) -> list[int]:
    """The prime factors of `patch_size`, 2s first: one encoder stage (and one decoder stage) each."""
    factors, rest, prime = [], patch_size, 2
    while rest > 1:
        while rest % prime == 0:
            factors.append(prime)
            rest //= prime
        prime += 1
    return factors


def _stage_widths(config: VisualTokenizerConfig) -> list[int]:
    stages = len(downsampling_factors(config.patch_size))
    return [config.hidden_channels * min(2**i, 4) for i in range(stages + 1)]


def _downsample(in_channels: int, out_channels: int, factor: int) -> nn.Conv2d:
    # a 4x4 stride-2 convolution halves (VQGAN's); an odd prime factor is cut in non-overlapping squares
    if factor == 2:
        return nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)
    return nn.Conv2d(in_channels, out_channels, factor, stride=factor)


def _res_blocks(channels: int, count: int) -> list[nn.Module]:
    return [ResBlock(channels) for _ in range(count)]


def build_encoder(config: VisualTokenizerConfig, out_channels: int) -> nn.Sequential:
    widths, factors = _stage_widths(config), downsampling_factors(config.patch_size)
    layers: list[nn.Module] = [nn.Conv2d(config.num_channels, widths[0], 3, padding=1)]
    for i, factor in enumerate(factors):
        layers += _res_blocks(widths[i], config.num_res_blocks)
        layers.append(_downsample(widths[i], widths[i + 1], factor))
    layers += _res_blocks(widths[-1], config.num_res_blocks)
    layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 1)]
    return nn.Sequential(*layers)


def encoder_state_layers(config: VisualTokenizerConfig) -> list[int]:
    """Indices of the encoder layers whose outputs are its `hidden_states`: the stem, each downsampling, and the
    last residual block (the features the bottleneck is computed from)."""
    per_stage = config.num_res_blocks + 1
    stages = len(downsampling_factors(config.patch_size))
    return [0] + [per_stage * (i + 1) for i in range(stages)] + [per_stage * stages + config.num_res_blocks]


def build_decoder(config: VisualTokenizerConfig) -> nn.Sequential:
    widths = _stage_widths(config)
    layers: list[nn.Module] = [nn.Conv2d(config.embedding_dim, widths[-1], 3, padding=1)]
    layers += _res_blocks(widths[-1], config.num_res_blocks)
    factors = downsampling_factors(config.patch_size)
    for i in reversed(range(len(widths) - 1)):
        upsample = nn.Upsample(scale_factor=factors[i], mode="nearest")
        layers += [upsample, nn.Conv2d(widths[i + 1], widths[i], 3, padding=1)]
        layers += _res_blocks(widths[i], config.num_res_blocks)
    layers += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], config.num_channels, 3, padding=1)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class VisualTokenizer(MIMPreTrainedModel):
    """A discrete image tokenizer: image -> one code id per patch, and back. Train it with
    `hf-mim pretrain --method visual-tokenizer`, then give its folder to BEiT (`tokenizer_name_or_path`).

    `get_codebook_indices(pixel_values)` gives BEiT's targets, (B, rows * cols) ids in the ViT's patch order.
    """

    config_class = VisualTokenizerConfig
    base_model_prefix = "tokenizer"
    supports_gradient_checkpointing = False
    _can_compile_fullgraph = False
    _no_split_modules = None

    def __init__(self, config: VisualTokenizerConfig):
        super().__init__(config)
        vq = config.quantizer == "vq_ema"
        self.encoder = build_encoder(config, config.embedding_dim if vq else config.vocab_size)
        self.quantizer = EMAVectorQuantizer(config) if vq else GumbelQuantizer(config)
        self.decoder = build_decoder(config)
        self._state_layers = encoder_state_layers(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            # PyTorch's default convolution initialisation, through transformers' loading-aware functions
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, EMAVectorQuantizer):
            init.copy_(module.embedding, initial_codebook(self.config))
            init.zeros_(module.cluster_size)
            init.zeros_(module.embed_sum)
            init.zeros_(module.initialized)
        elif isinstance(module, GumbelQuantizer):
            init.constant_(module.temperature, self.config.gumbel_temperature)

    def get_input_embeddings(self):
        return self.encoder[0]

    def check_pixel_values(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        channels, p = self.config.num_channels, self.config.patch_size
        if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {channels}, height, width), got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if height % p or width % p:
            raise ValueError(f"pixel_values of {height}x{width} pixels are not divisible into {p}x{p} patches")
        return height // p, width // p

    def quantize(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """The quantizer's outputs (quantized, ids, loss, perplexity, usage), then the encoder's hidden states
        (None unless asked for)."""
        self.check_pixel_values(pixel_values)
        features, hidden_states = pixel_values, () if output_hidden_states else None
        keep = set(self._state_layers) if output_hidden_states else ()
        for index, layer in enumerate(self.encoder):
            features = layer(features)
            if index in keep:
                hidden_states = hidden_states + (features,)
        return *self.quantizer(features), hidden_states

    @torch.no_grad()
    def get_codebook_indices(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, rows * cols) token ids, row-major like the ViT's patches. Deterministic: the
        quantizer's eval path is used whatever the module's mode, and no statistics are updated."""
        was_training = self.quantizer.training
        self.quantizer.eval()
        try:
            _, ids, *_ = self.quantize(pixel_values)
        finally:
            self.quantizer.train(was_training)
        return ids.flatten(1)

    def decode_ids(self, token_ids: torch.Tensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Token ids, (B, rows, cols) or (B, rows * cols) on `grid_size`, -> images (B, C, H, W)."""
        if token_ids.ndim == 2:
            rows, cols = grid_size or self.config.grid_size
            token_ids = token_ids.view(-1, rows, cols)
        return self.decoder(self.quantizer.lookup(token_ids))

    @torch.no_grad()
    def picture_tokens(self, pixel_values: torch.Tensor) -> TokenMaps:
        """The token picture's maps: the images' token ids and their decoding."""
        token_ids = self.get_codebook_indices(pixel_values)
        decoded = self.decode_ids(token_ids, self.check_pixel_values(pixel_values))
        return TokenMaps(token_ids, [decoded], self.config.image_mean, self.config.image_std)

    def set_training_step(self, step: int) -> None:
        """Gumbel only: the temperature for optimizer step `step`, cosine-annealed over `gumbel_anneal_steps`."""
        if not isinstance(self.quantizer, GumbelQuantizer):
            return
        start, end, steps = (
            self.config.gumbel_temperature,
            self.config.gumbel_temperature_min,
            self.config.gumbel_anneal_steps,
        )
        progress = 1.0 if steps == 0 else min(1.0, step / steps)
        self.quantizer.temperature.fill_(end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress)))

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.set_training_step(step)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VisualTokenizerOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; sides multiples of `patch_size`.
            output_hidden_states (`bool`, *optional*):
                Also return the encoder's feature maps (see [`VisualTokenizerOutput`]); `config.output_hidden_states`
                when not given.
            return_dict (`bool`, *optional*):
                Return a [`VisualTokenizerOutput`] rather than a tuple.
        """
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        quantized, ids, quantization_loss, perplexity, usage, hidden_states = self.quantize(
            pixel_values, output_hidden_states
        )
        reconstruction = self.decoder(quantized)
        reconstruction_loss = F.mse_loss(reconstruction.float(), pixel_values.float())
        loss = reconstruction_loss + quantization_loss
        output = VisualTokenizerOutput(
            loss=loss,
            reconstruction=reconstruction,
            token_ids=ids,
            reconstruction_loss=reconstruction_loss.detach(),
            quantization_loss=quantization_loss.detach(),
            perplexity=perplexity,
            codebook_usage=usage,
            hidden_states=hidden_states,
        )
        return output if return_dict else output.to_tuple()


METHOD = MethodSpec(
    name="visual-tokenizer",
    auto_classes={"AutoConfig": VisualTokenizerConfig, "AutoModel": VisualTokenizer},
    card=MethodCard(
        display_name="Visual tokenizer",
        paper_title="Neural Discrete Representation Learning (van den Oord et al., 2017), as used by BEiT",
        paper_url="https://arxiv.org/abs/1711.00937",
        paragraph=(
            "A convolutional autoencoder with one discrete code per Vision Transformer patch (an EMA vector "
            "quantizer or DALL-E's Gumbel-softmax relaxation). Its token ids are the prediction targets of "
            "BEiT-style pretraining."
        ),
        bibtex="""@inproceedings{vandenoord2017neural,
  title     = {Neural Discrete Representation Learning},
  author    = {van den Oord, Aaron and Vinyals, Oriol and Kavukcuoglu, Koray},
  booktitle = {NeurIPS},
  year      = {2017}
}

@inproceedings{bao2022beit,
  title     = {{BEiT}: {BERT} Pre-Training of Image Transformers},
  author    = {Bao, Hangbo and Dong, Li and Piao, Songhao and Wei, Furu},
  booktitle = {ICLR},
  year      = {2022}
}""",
        target=lambda config: f"pixels, through a {config.vocab_size}-code {config.quantizer} bottleneck",
        limitations=("It is an image tokenizer, not a feature extractor: use its `token_ids`, not pooled features.",),
        encoder=False,
        architecture=lambda config: (
            ("Quantizer", config.quantizer),
            ("Vocabulary", str(config.vocab_size)),
            ("Code dimension", str(config.embedding_dim)),
        ),
    ),
    paper=Recipe(base_lr=1e-3),
    small=Recipe(base_lr=1e-2, config=dict(vocab_size=512, hidden_channels=32), epochs=20),
    betas=(0.9, 0.99),
    # the tokenizer should see images as BEiT will feed them: BEiT's crop range
    crop_scale=(0.08, 1.0),
    picture=Picture(
        kind="tokens",
        file="tokens.png",
        alt="Visual tokens",
        caption="Per row: the image, the tokenizer's token map (one colour per token id), and its decoding.",
    ),
    tiny_config=dict(image_size=32, patch_size=8, vocab_size=16, embedding_dim=8, hidden_channels=8),
    encoder_presets=False,
)

__all__ = [
    "METHOD",
    "VisualTokenizerOutput",
    "QUANTIZERS",
    "VisualTokenizerConfig",
    "VisualTokenizer",
    "EMAVectorQuantizer",
    "GumbelQuantizer",
    "TokenMaps",
]
