"""MAE: He et al., "Masked Autoencoders Are Scalable Vision Learners" (2021), https://arxiv.org/abs/2111.06377.

The encoder sees only the visible patches; a light decoder sees visible latents plus mask tokens and predicts the
pixels of every patch; the loss is the MSE on masked patches, of per-patch normalised pixels when `norm_pix_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

from .backbone import config_error, patchify, to_2tuple, unpatchify
from .base import MIMModel, MIMPreTrainedModel, ViTEncoder
from .classification import MIMForImageClassification
from .heads import MAEDecoder
from .losses import (
    denormalize_patches,
    gather_across_ranks,
    masked_mse_loss,
    normalize_patches,
    per_image_masked_mse_loss,
    reverse_gradient,
)
from .masking import (
    LearnedMask,
    MaskedMIMConfig,
    MaskIndices,
    bool_mask_to_indices,
    foreground_patches,
    learned_mask_counts,
    learned_masking,
    positional_entropy,
    positional_imbalance,
    random_masking,
)
from .spec import (
    RECONSTRUCTION_PICTURE,
    TINY_VIT,
    Adversary,
    MethodCard,
    MethodSpec,
    Picture,
    Recipe,
    decoder_rows,
    draw_inputs,
    masking_rows,
)


@dataclass
class MAEForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Mean squared error over the masked patches (of normalised pixels when `norm_pix_loss`).
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2 * num_channels)`):
            Predicted pixels of every patch, in grid order, flattened as (row, column, channel).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 for masked patches, 0 for visible ones.
        ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            Permutation that restores grid order from [visible..., masked...].
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input then each encoder block's output, each `(batch_size, 1 + num_visible, hidden_size)`,
            when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Each encoder block's attention weights, `(batch_size, num_heads, 1 + num_visible, 1 + num_visible)`,
            when `output_attentions=True` (transformers' ViTMAE returns the encoder's too).
        reconstruction_loss, mask_penalty, mask_entropy, mask_imbalance, mask_foreground_overlap, foreground_fraction
            (`torch.FloatTensor` of shape `()`, *optional*):
            With `mask_strategy="learned"` only: the reconstruction loss alone (`loss` adds the penalty); the mask
            model's penalty, `mask_diversity_weight * positional_imbalance(relaxed masks)`; the entropy of the
            positions the scores masked in this batch, over log L (1: spread evenly, 0: always one place); their
            `positional_imbalance` (0: every position masked equally often, 1: each always or never); the share of
            the scored patches that lie on the foreground, and the share of all patches that do (random masks
            overlap the foreground by about the latter; see `foreground_patches`).
        mask_scores (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
            With `mask_strategy="learned"`: the mask model's scores, standardised per image.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    mask_penalty: torch.FloatTensor | None = None
    mask_entropy: torch.FloatTensor | None = None
    mask_imbalance: torch.FloatTensor | None = None
    mask_foreground_overlap: torch.FloatTensor | None = None
    foreground_fraction: torch.FloatTensor | None = None
    mask_scores: torch.FloatTensor | None = None


class MaskedEncoding(NamedTuple):
    """What MAE's masked encoder gives: `latent` (B, 1 + K, D); the `MaskIndices` used; the `LearnedMask` with
    `mask_strategy="learned"` (else None); the patch `grid`; `hidden_states` and `attentions` when asked for."""

    latent: torch.Tensor
    masking: MaskIndices
    learned: LearnedMask | None
    grid: tuple[int, int]
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None


class MAEConfig(MaskedMIMConfig):
    r"""
    Configuration of an MAE model. Field names are those of transformers' `ViTMAEConfig`; defaults give ViT-B/16
    with the paper's 8-layer, 512-wide decoder. The encoder fields are documented on [`MIMConfig`]
    (`image_size`, `patch_size`, `num_channels`, `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
    `intermediate_size`, `hidden_act`, `hidden_dropout_prob`, `attention_probs_dropout_prob`, `drop_path_rate`,
    `initializer_range`, `layer_norm_eps`, `qkv_bias`, `layer_scale_init_value`, `position_embedding_type`,
    `pooling`, `image_mean`, `image_std`) and accepted here as keywords, as are the masking fields documented on
    [`MaskedMIMConfig`] (`mask_strategy`, `mask_patch_size`, `mask_min_num_patches`, `mask_max_num_patches`,
    `mask_min_aspect`). MAE's default strategy is `"random"`; the others work too, since each masks the same
    number of patches in every image, which is what dropping them needs.

    `mask_strategy="learned"` masks the patches a light mask model scores highest: a small CNN on a downsampled
    copy of the image (`mask_model_pixels_per_patch` pixels per patch side), never the ViT over all patches. It is
    trained against the reconstruction loss (it maximises what the encoder and decoder minimise) through a
    straight-through relaxation of a Gumbel top-k (`hf_mim.modeling.masking.learned_masking`), with its own
    optimizer under `hf-mim pretrain` and a gradient reversal under `transformers.Trainer`. Two constraints keep
    its masks from becoming trivial: a share of every mask is random (`mask_random_ratio`), and a penalty
    (`mask_diversity_weight`) holds the batch's masks from piling on the same positions.

    Args:
        decoder_hidden_size (`int`, *optional*, defaults to 512):
            Width of the decoder.
        decoder_num_hidden_layers (`int`, *optional*, defaults to 8):
            Number of transformer blocks in the decoder.
        decoder_num_attention_heads (`int`, *optional*, defaults to 16):
            Attention heads per decoder block; must divide `decoder_hidden_size`.
        decoder_intermediate_size (`int`, *optional*, defaults to 2048):
            Hidden width of the decoder MLPs.
        mask_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of patches hidden from the encoder, strictly between 0 and 1; `int(L * (1 - mask_ratio))`
            patches stay visible (with `mask_strategy="random"`), and at least one patch must be masked and one
            kept.
        norm_pix_loss (`bool`, *optional*, defaults to `True`):
            Whether the target is each patch's pixels normalised by that patch's mean and standard deviation (the
            paper's recommended setting, Table 3). transformers' `ViTMAEConfig` defaults to `False`. With it, the
            raw logits are not images: de-normalise them with the visible patches' statistics to look at them.
        mask_model_channels (`int`, *optional*, defaults to 32):
            `"learned"` only: width of the mask model's convolutions.
        mask_model_pixels_per_patch (`int`, *optional*):
            `"learned"` only: the mask model sees the image resized to this many pixels per patch side (56 x 56 for
            224 px images of 16 px patches); a power of 2 no larger than `patch_size`. Defaults to 4, or, for
            patches under 4 px, the largest power of 2 that fits (2 for 2 px and 3 px patches).
        mask_random_ratio (`float`, *optional*, defaults to 0.25):
            `"learned"` only: share of each image's masked patches chosen uniformly at random rather than by the
            scores, in [0, 1); at least one masked patch must be left to the scores.
        mask_temperature (`float`, *optional*, defaults to 0.25):
            `"learned"` only: the per-image standardised scores are divided by it before the Gumbel noise is added;
            lower is closer to always masking the top scores, higher closer to random masks.
        mask_diversity_weight (`float`, *optional*, defaults to 1.0):
            `"learned"` only: weight of the penalty on the batch's relaxed masks, the variance over positions of
            each position's masking frequency over its largest possible value (`positional_imbalance`), which the
            mask model minimises so that it neither masks nor shows the same places in every image.
        mask_model_learning_rate (`float`, *optional*, defaults to 1e-3):
            `"learned"` only: AdamW learning rate of the mask model (its own optimizer under `hf-mim pretrain`, its
            own parameter group under hf_mim's Trainer).
        gradient_reversal_scale (`float`, *optional*, defaults to 1.0):
            `"learned"` only: the mask model receives minus this times the reconstruction loss's gradient.

    Example:

    ```python
    >>> from hf_mim import MAEConfig, MAEForPreTraining
    >>> config = MAEConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
    ...                    intermediate_size=1536)  # ViT-S/16
    >>> model = MAEForPreTraining(config)
    ```
    """

    model_type = "hf_mim_mae"
    model_mask_strategies = ("learned",)

    def __init__(
        self,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 16,
        decoder_intermediate_size: int = 2048,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        mask_model_channels: int = 32,
        mask_model_pixels_per_patch: int | None = None,
        mask_random_ratio: float = 0.25,
        mask_temperature: float = 0.25,
        mask_diversity_weight: float = 1.0,
        mask_model_learning_rate: float = 1e-3,
        gradient_reversal_scale: float = 1.0,
        **kwargs,
    ):
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.norm_pix_loss = norm_pix_loss
        self.mask_model_channels = mask_model_channels
        self.mask_model_pixels_per_patch = mask_model_pixels_per_patch
        self.mask_random_ratio = mask_random_ratio
        self.mask_temperature = mask_temperature
        self.mask_diversity_weight = mask_diversity_weight
        self.mask_model_learning_rate = mask_model_learning_rate
        self.gradient_reversal_scale = gradient_reversal_scale
        super().__init__(mask_ratio=mask_ratio, **kwargs)
        if self.mask_model_pixels_per_patch is None:  # patch_size is a positive int by now
            self.mask_model_pixels_per_patch = min(4, 1 << (self.patch_size.bit_length() - 1))
        self._validate_mae()
        self._validate_mask_model()

    @property
    def learned_masks(self) -> bool:
        return self.mask_strategy == "learned"

    def _validate_mae(self) -> None:
        self._require_positive_ints(
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
            "decoder_intermediate_size",
        )
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise config_error(
                "decoder_hidden_size",
                self.decoder_hidden_size,
                f"must be divisible by decoder_num_attention_heads={self.decoder_num_attention_heads}",
            )
        if self.decoder_hidden_size % 4:
            raise config_error(
                "decoder_hidden_size", self.decoder_hidden_size, "must be divisible by 4 (sincos position embeddings)"
            )

    def _validate_mask_model(self) -> None:
        self._require_positive_ints("mask_model_channels", "mask_model_pixels_per_patch")
        pixels = self.mask_model_pixels_per_patch
        if pixels & (pixels - 1) or pixels > self.patch_size:
            raise config_error(
                "mask_model_pixels_per_patch", pixels, f"a power of 2 no larger than patch_size={self.patch_size}"
            )
        ratio = self.mask_random_ratio
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
            raise config_error("mask_random_ratio", ratio, "a float in [0, 1)")
        if learned_mask_counts(self.num_patches, self.mask_ratio, ratio)[1] < 1:
            raise config_error(
                "mask_random_ratio", ratio, f"small enough to leave the scores a patch at mask_ratio={self.mask_ratio}"
            )
        for field in ("mask_temperature", "mask_model_learning_rate"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise config_error(field, value, "a positive float")
        for field in ("mask_diversity_weight", "gradient_reversal_scale"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise config_error(field, value, "a non-negative float")


class MAEPreTrainedModel(MIMPreTrainedModel):
    config_class = MAEConfig


class MAEModel(MIMModel):
    """The MAE encoder without masking (what `AutoModel` returns); see [`MIMModel`]."""

    config_class = MAEConfig


class MAEForImageClassification(MIMForImageClassification):
    """MAE encoder plus a linear head; see [`MIMForImageClassification`]."""

    config_class = MAEConfig


class MaskModel(nn.Module):
    """The learned strategy's mask model: one score per patch from a cheap view of the image.

    The image is resized (area interpolation) to `mask_model_pixels_per_patch` pixels per patch side; a 3x3
    convolution, one stride-2 3x3 convolution per halving down to the patch grid, a 3x3 convolution there for
    context between neighbouring patches, and a 1x1 convolution to one channel; GELU between them, no
    normalisation (no batch statistics to keep in sync across processes). At 224 px with 16 px patches and the
    default width it costs about 14 M multiply-adds an image, against about 4.6 G for ViT-S/16 over all patches.
    (B, C, H, W) -> (B, L)."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        width, pixels = config.mask_model_channels, config.mask_model_pixels_per_patch
        layers: list[nn.Module] = [nn.Conv2d(config.num_channels, width, 3, padding=1), nn.GELU()]
        for _ in range(int(math.log2(pixels))):
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU()]
        # no bias on the last layer: the per-image standardisation of the scores would cancel it
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 1, 1, bias=False)]
        self.layers = nn.Sequential(*layers)
        self.patch_size, self.pixels_per_patch = config.patch_size, pixels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        rows, cols = pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size
        size = (rows * self.pixels_per_patch, cols * self.pixels_per_patch)
        view = pixel_values
        if tuple(view.shape[-2:]) != size:
            view = F.interpolate(view, size=size, mode="area")
        return self.layers(view).flatten(1)


class MAEForPreTraining(MAEPreTrainedModel):
    """MAE for pretraining: masked encoder, pixel decoder, masked MSE loss; with `mask_strategy="learned"`, also the
    `mask_model` that chooses the masks."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.vit = ViTEncoder.part_of(config)
        self.decoder = MAEDecoder(config)
        self.mask_model = MaskModel(config) if getattr(config, "learned_masks", False) else None
        self.post_init()

    def mask_model_parameters(self) -> list[nn.Parameter]:
        """What the mask model's optimizer trains (nothing without learned masks)."""
        return list(self.mask_model.parameters()) if self.mask_model is not None else []

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, patch_size**2 * C), laid out as `logits`."""
        return patchify(pixel_values, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor, image_size: Sequence[int] | None = None) -> torch.Tensor:
        """(B, L, patch_size**2 * C) -> (B, C, H, W) for `image_size` (H, W), the configured one by default."""
        height, width = to_2tuple(image_size if image_size is not None else self.config.image_size)
        p = self.config.patch_size
        return unpatchify(patches, p, (height // p, width // p), self.config.num_channels)

    # The four stages of facebookresearch/mae's models_mae.py -------------------------------------------------

    def forward_encoder(
        self,
        pixel_values,
        noise=None,
        interpolate_pos_encoding=False,
        output_hidden_states=False,
        bool_masked_pos=None,
        score_noise=None,
    ):
        """Embed, drop the masked patches, encode the rest. Returns latent (B, 1 + K, D), mask, ids_restore, grid,
        hidden states."""
        encoded = self._encode(
            pixel_values, noise, interpolate_pos_encoding, output_hidden_states, bool_masked_pos, score_noise
        )
        return encoded.latent, encoded.masking.mask, encoded.masking.ids_restore, encoded.grid, encoded.hidden_states

    def _encode(
        self,
        pixel_values,
        noise,
        interpolate_pos_encoding,
        output_hidden_states,
        bool_masked_pos,
        score_noise,
        output_attentions=None,
    ) -> MaskedEncoding:
        """forward_encoder's work; also gives the `LearnedMask` (or None) the loss and metrics need, and the
        attentions (when `output_attentions`, or the config, says)."""
        tokens, cls = self.vit.embed(pixel_values, interpolate_pos_encoding)  # (B, L, D), (B, 1, D)
        batch, length, dim = tokens.shape
        learned = None
        if self.mask_model is not None and bool_masked_pos is None:
            learned = self.learned_masking(pixel_values, noise, score_noise)
            masking = learned.indices
        else:
            masking = self.masking(batch, length, pixel_values, noise, bool_masked_pos)  # ids_keep (B, K)
        visible = torch.gather(tokens, 1, masking.ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (B, K, D)
        # (B, 1 + K, D): only the visible patches (and CLS) pass through the encoder
        latent, hidden_states, attentions = self.vit.forward_tokens(
            torch.cat([cls, visible], dim=1), output_hidden_states, self._attention_flag(output_attentions)
        )
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        return MaskedEncoding(latent, masking, learned, grid, hidden_states, attentions)

    def learned_masking(self, pixel_values, noise=None, score_noise=None) -> LearnedMask:
        """The mask model's masks of this batch (`mask_strategy="learned"`), from the given noise or noise drawn
        as the data pipeline draws it."""
        config = self.config
        if noise is None or score_noise is None:
            grid = (pixel_values.shape[-2] // config.patch_size, pixel_values.shape[-1] // config.patch_size)
            drawn = draw_inputs(sample_mae_inputs, config, grid, pixel_values.shape[0], pixel_values.device)
            noise = drawn["noise"] if noise is None else noise
            score_noise = drawn["score_noise"] if score_noise is None else score_noise
        return learned_masking(
            self.mask_model(pixel_values),
            config.mask_ratio,
            config.mask_random_ratio,
            config.mask_temperature,
            noise=noise.to(pixel_values.device),
            score_noise=score_noise.to(pixel_values.device),
            reverse=lambda relaxed: reverse_gradient(relaxed, config.gradient_reversal_scale),
        )

    def masking(self, batch, length, pixel_values, noise=None, bool_masked_pos=None):
        """The index form of this batch's mask: from `bool_masked_pos` or `noise` when given, else drawn per image
        as the data pipeline draws it (`sample_mae_inputs`)."""
        if noise is None and bool_masked_pos is None:
            grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
            drawn = draw_inputs(sample_mae_inputs, self.config, grid, batch, pixel_values.device)
            noise, bool_masked_pos = drawn.get("noise"), drawn.get("bool_masked_pos")
        if bool_masked_pos is not None:
            if noise is not None:
                raise ValueError("pass noise or bool_masked_pos, not both")
            if tuple(bool_masked_pos.shape) != (batch, length):
                raise ValueError(
                    f"bool_masked_pos must have shape (batch, num_patches) = {(batch, length)}, "
                    f"got {tuple(bool_masked_pos.shape)}"
                )
            return bool_mask_to_indices(bool_masked_pos.to(pixel_values.device))
        if self.config.mask_strategy != "random":
            raise ValueError(
                f"noise only defines masks with mask_strategy='random' (this model uses "
                f"{self.config.mask_strategy!r}); pass bool_masked_pos instead"
            )
        return random_masking(batch, length, self.config.mask_ratio, noise=noise, device=pixel_values.device)

    def forward_decoder(self, latent, ids_restore, grid=None):
        """Pixel predictions of every patch, (B, L, patch_size**2 * C)."""
        return self.decoder(latent, ids_restore, grid)

    def forward_loss(self, pixel_values, logits, mask, per_image: bool = False):
        """MSE over masked patches; targets normalised per patch when `norm_pix_loss`. `per_image`: the mean of
        each image's (learned masks: each patch's gradient is then measured against its own image)."""
        target = self.patchify(pixel_values)
        if self.config.norm_pix_loss:
            target = normalize_patches(target.float())
        return (per_image_masked_mse_loss if per_image else masked_mse_loss)(logits, target, mask)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        score_noise: torch.Tensor | None = None,
        output_attentions: bool | None = None,
    ) -> MAEForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                As transformers' ViTMAE `noise`: patches are sorted by ascending noise and the lowest are kept.
                Drawn uniformly when not given; pass it for reproducible masks. Only with `mask_strategy="random"`,
                or `"learned"`, where it picks the random share of the mask (the highest-noise patches).
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Accept other resolutions (multiples of the patch size, square or not) by resampling the position
                embeddings; at the configured size it changes nothing.
            output_hidden_states (`bool`, *optional*):
                Also return the encoder's hidden states.
            return_dict (`bool`, *optional*):
                Return a [`MAEForPreTrainingOutput`] rather than a tuple.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                The mask itself (True = masked), as in transformers' `ViTForMaskedImageModeling`; every row must
                mask the same number of patches. Instead of `noise`; when neither is given the configured
                `mask_strategy` draws the masks. With `"learned"`, a given mask bypasses the mask model.
            score_noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                `mask_strategy="learned"` only: uniform noise in [0, 1], made Gumbel noise on the mask model's scores.
                Drawn when not given.
            output_attentions (`bool`, *optional*):
                Also return the encoder's attention weights over the visible patches; `config.output_attentions`
                when not given.
        """
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        encoded = self._encode(
            pixel_values, noise, interpolate_pos_encoding, output_hidden_states, bool_masked_pos, score_noise,
            output_attentions,
        )  # fmt: skip
        masking, learned = encoded.masking, encoded.learned
        logits = self.forward_decoder(encoded.latent, masking.ids_restore, encoded.grid)
        if learned is None:
            loss = self.forward_loss(pixel_values, logits, masking.mask)
        else:  # weights equal to the mask, through which the loss reaches the mask model
            loss = self.forward_loss(pixel_values, logits, learned.weights, per_image=True)
        output = MAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            mask=masking.mask,
            ids_restore=masking.ids_restore,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        if learned is not None:
            self._add_mask_model_outputs(output, learned, pixel_values)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def reconstruct_pixels(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction (B, C, H, W) in the input's normalised scale, bool_masked_pos (B, L)), masks drawn as
        `forward` draws them: the reconstruction picture and error. Normalised-pixel predictions
        (`norm_pix_loss`) are put back in the pixels' scale with the visible patches' statistics."""
        output = self(pixel_values)
        predicted, masked = output.logits.float(), output.mask.bool()  # (B, L, P*P*C), (B, L)
        if self.config.norm_pix_loss:
            predicted = denormalize_patches(predicted, self.patchify(pixel_values.float()), ~masked)
        return self.unpatchify(predicted, pixel_values.shape[-2:]), masked

    def _add_mask_model_outputs(self, output: MAEForPreTrainingOutput, learned: LearnedMask, pixel_values) -> None:
        """The penalty the mask model minimises (added to `loss`) and what shows whether its masks are trivial."""
        # Over the scored patches only (the random share is no choice of the mask model's), and in training over
        # the global batch: how often a position is masked is a batch statistic, which should not depend on the
        # process count. Not in eval mode, where one process alone draws pictures: a collective would hang.
        # One collective for both tensors, and none when the penalty is off.
        at_random = learned.indices.mask.bool() & ~learned.learned
        weight = self.config.mask_diversity_weight
        both = torch.stack([learned.relaxed, (~at_random).to(learned.relaxed.dtype)], dim=1)  # (B, 2, L)
        if self.training and weight > 0:
            both = gather_across_ranks(both)
        penalty = weight * positional_imbalance(both[:, 0], both[:, 1].bool())
        output.reconstruction_loss = output.loss.detach()
        output.loss = output.loss + penalty
        output.mask_penalty = penalty.detach()
        output.mask_scores = learned.scores
        with torch.no_grad():
            foreground = foreground_patches(pixel_values, self.config.patch_size)
            scored = learned.learned
            output.mask_entropy = positional_entropy(scored)
            output.mask_imbalance = positional_imbalance(scored, ~at_random)
            output.mask_foreground_overlap = (foreground & scored).sum() / scored.sum()
            output.foreground_fraction = foreground.float().mean()

    @torch.no_grad()
    def picture_panels(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The learned-masks picture: the image, the mask model's scores (bright: likely masked), a learned mask
        (the patches the scores chose grey, the random share dark grey) and a random mask at the same ratio (grey),
        each (B, C, H, W) in [0, 1]. Masks are drawn from the global generator."""
        if self.mask_model is None:
            raise ValueError(f"mask_strategy={self.config.mask_strategy!r}: only learned masks have this picture")
        config, patch = self.config, self.config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        mean = torch.tensor(config.image_mean, device=pixel_values.device).view(1, -1, 1, 1)
        std = torch.tensor(config.image_std, device=pixel_values.device).view(1, -1, 1, 1)
        image = (pixel_values.float() * std + mean).clamp(0, 1)
        learned = self.learned_masking(pixel_values)
        scores = learned.scores
        low, high = scores.min(dim=1, keepdim=True).values, scores.max(dim=1, keepdim=True).values
        scores = (scores - low) / (high - low).clamp_min(1e-6)
        at_random = learned.indices.mask.bool() & ~learned.learned
        random = random_masking(len(image), grid[0] * grid[1], config.mask_ratio, device=image.device).mask

        def on_pixels(values):  # (B, L) -> (B, 1, H, W)
            values = values.float().view(-1, 1, *grid)
            return values.repeat_interleave(patch, 2).repeat_interleave(patch, 3)

        def greyed(picture, mask, shade):
            covered = on_pixels(mask)
            return picture * (1 - covered) + shade * covered

        chosen = greyed(greyed(image, learned.learned, 0.5), at_random, 0.25)
        return [image, on_pixels(scores).expand_as(image), chosen, greyed(image, random, 0.5)]


def sample_mae_inputs(config: MAEConfig, grid: tuple[int, int], generator: torch.Generator | None) -> dict:
    """One image's mask: transformers' ViTMAE `noise` with the random strategy (the lowest-noise patches stay
    visible); with the learned one, `noise` for its random share and `score_noise` for the Gumbel noise on the
    scores; else `bool_masked_pos` from the configured strategy."""
    length = grid[0] * grid[1]
    if config.mask_strategy == "random":
        return {"noise": torch.rand(length, generator=generator)}
    if config.mask_strategy == "learned":
        return {
            "noise": torch.rand(length, generator=generator),
            "score_noise": torch.rand(length, generator=generator),
        }
    return {"bool_masked_pos": config.masking_spec().sample(grid, generator)}


def mask_model_step(accelerator, model, optimizer, micro_batches) -> dict[str, torch.Tensor]:
    """The mask model's update under `hf-mim pretrain`: after the main optimizer's step on the reconstruction loss,
    the mask model's own optimizer steps against that loss.

    ADIOS replays the micro-batches for this step, so that its occlusion model faces the updated encoder; that
    costs a second forward and backward of the whole model. Here the
    mask model's gradient comes from the main step's own backward, through the gradient reversal in the forward:
    it is the gradient at the encoder of the step before, and costs only the mask model's own backward. DDP has
    already averaged it over the processes with the rest; the trainer skips this step with the main one when the
    loss is not finite. Under fp16 the two optimizers share accelerate's one GradScaler: on the rare step where
    the main step changes the scale (growth, or backoff after an overflow), this step unscales by the new scale,
    a factor of 2 that AdamW's normalisation all but absorbs; bf16 has no scaler."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {}


LEARNED_MASKS_PICTURE = Picture(
    kind="panels",
    file="learned_masks.png",
    alt="Learned masks next to random masks",
    caption="Per row: the image, the mask model's scores (bright: likely masked), a learned mask (grey: the patches "
    "the mask model chose; dark grey: the random share) and a random mask of the same ratio (grey).",
)


def _mae_target(config) -> str:
    pixels = "per-patch normalised pixels (`norm_pix_loss`)" if config.norm_pix_loss else "raw pixels"
    target = f"{pixels} of masked patches, mean squared error"
    if getattr(config, "learned_masks", False):
        target += (
            f"; the masks are learned: a mask model trained against this loss chooses "
            f'{1 - config.mask_random_ratio:.0%} of each mask, the rest is random (`mask_strategy="learned"`)'
        )
    return target


MAE_BIBTEX = """@inproceedings{he2022masked,
  title     = {Masked Autoencoders Are Scalable Vision Learners},
  author    = {He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle = {CVPR},
  year      = {2022}
}"""

METHOD = MethodSpec(
    name="mae",
    auto_classes={
        "AutoConfig": MAEConfig,
        "AutoModel": MAEModel,
        "AutoModelForPreTraining": MAEForPreTraining,
        "AutoModelForImageClassification": MAEForImageClassification,
    },
    card=MethodCard(
        display_name="MAE",
        paper_title="Masked Autoencoders Are Scalable Vision Learners (He et al., 2021)",
        paper_url="https://arxiv.org/abs/2111.06377",
        paragraph=(
            "A masked autoencoder hides a large random subset of the image's patches, encodes only the visible "
            "ones with a Vision Transformer, and a lightweight decoder reconstructs the pixels of the hidden "
            "patches from the encoded tokens and mask tokens. The loss is the mean squared error on the masked "
            "patches. Only the encoder is used downstream."
        ),
        bibtex=MAE_BIBTEX,
        target=_mae_target,
        architecture=lambda config: decoder_rows(config) + masking_rows(config),
        limitations=(
            "MAE features are known to need fine-tuning or a non-linear probe: linear-probe accuracy lags "
            "contrastive methods at equal compute.",
        ),
    ),
    paper=Recipe(base_lr=1.5e-4),
    # Small data (measured on the digits; benchmarks/RESULTS.md, issue 16): a one-block 128-wide decoder fine-tunes
    # as well as two blocks (90.6 vs 89.4, 3 seeds) and runs 13% faster; plain pixel targets, since
    # norm_pix_loss on upsampled 8x8 digits fine-tunes no better and reconstructs nothing a picture can show; 100
    # epochs (60: 87.3, 30: 79.8). On larger data at most 1,200,000 images: 20 epochs of Fashion-MNIST's 60,000
    # lead logistic regression on the raw pixels by +2.5 +- 0.2 at 1% of the labels where 10 epochs led by +0.5 +- 0.7
    # (3 pretraining seeds each; benchmarks/RESULTS.md, issue 28).
    small=Recipe(
        base_lr=1e-2,
        config=dict(
            decoder_hidden_size=128,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=512,
            norm_pix_loss=False,
        ),
        epochs=100,
        max_images=1_200_000,
    ),
    sample_inputs=sample_mae_inputs,
    picture=RECONSTRUCTION_PICTURE,
    config_pictures=lambda config: (LEARNED_MASKS_PICTURE,) if getattr(config, "learned_masks", False) else (),
    tiny_config=dict(
        **TINY_VIT,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
    ),
    adversary=Adversary(
        parameters=lambda model: model.mask_model_parameters(),
        learning_rate=lambda config: config.mask_model_learning_rate,
        step=mask_model_step,
        applies=lambda config: getattr(config, "learned_masks", False),
        replays=False,
    ),
)

__all__ = [
    "METHOD",
    "MAEForPreTrainingOutput",
    "MAEConfig",
    "MAEPreTrainedModel",
    "MAEModel",
    "MAEForPreTraining",
    "MAEForImageClassification",
    "MaskModel",
    "mask_model_step",
    "sample_mae_inputs",
]
