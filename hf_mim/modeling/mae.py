"""MAE: He et al., "Masked Autoencoders Are Scalable Vision Learners" (2021), https://arxiv.org/abs/2111.06377.

The encoder sees only the visible patches; a light decoder sees visible latents plus mask tokens and predicts the
pixels of every patch; the loss is the MSE on masked patches, of per-patch normalised pixels when `norm_pix_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .backbone import ViTEncoder, config_error, patchify, to_2tuple, unpatchify
from .base import MIMModel, MIMPreTrainedModel
from .classification import MIMForImageClassification
from .heads import MAEDecoder
from .losses import masked_mse_loss, normalize_patches
from .masking import MaskedMIMConfig, bool_mask_to_indices, random_masking
from .spec import RECONSTRUCTION_PICTURE, TINY_VIT, MethodCard, MethodSpec, Recipe, draw_inputs


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
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


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

    Example:

    ```python
    >>> from hf_mim import MAEConfig, MAEForPreTraining
    >>> config = MAEConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
    ...                    intermediate_size=1536)  # ViT-S/16
    >>> model = MAEForPreTraining(config)
    ```
    """

    model_type = "hf_mim_mae"

    def __init__(
        self,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 16,
        decoder_intermediate_size: int = 2048,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        **kwargs,
    ):
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.norm_pix_loss = norm_pix_loss
        super().__init__(mask_ratio=mask_ratio, **kwargs)
        self._validate_mae()

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


class MAEPreTrainedModel(MIMPreTrainedModel):
    config_class = MAEConfig


class MAEModel(MIMModel):
    """The MAE encoder without masking (what `AutoModel` returns); see [`MIMModel`]."""

    config_class = MAEConfig


class MAEForImageClassification(MIMForImageClassification):
    """MAE encoder plus a linear head; see [`MIMForImageClassification`]."""

    config_class = MAEConfig


class MAEForPreTraining(MAEPreTrainedModel):
    """MAE for pretraining: masked encoder, pixel decoder, masked MSE loss."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.vit = ViTEncoder(config)
        self.decoder = MAEDecoder(config)
        self.post_init()

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
    ):
        """Embed, drop the masked patches, encode the rest. Returns latent (B, 1 + K, D), mask, ids_restore, grid,
        hidden states."""
        tokens, cls = self.vit.embed(pixel_values, interpolate_pos_encoding)  # (B, L, D), (B, 1, D)
        batch, length, dim = tokens.shape
        masking = self.masking(batch, length, pixel_values, noise, bool_masked_pos)  # ids_keep (B, K)
        visible = torch.gather(tokens, 1, masking.ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (B, K, D)
        # (B, 1 + K, D): only the visible patches (and CLS) pass through the encoder
        latent, hidden_states, _ = self.vit.forward_tokens(torch.cat([cls, visible], dim=1), output_hidden_states)
        grid = (pixel_values.shape[-2] // self.config.patch_size, pixel_values.shape[-1] // self.config.patch_size)
        return latent, masking.mask, masking.ids_restore, grid, hidden_states

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

    def forward_loss(self, pixel_values, logits, mask):
        """MSE over masked patches; targets normalised per patch when `norm_pix_loss`."""
        target = self.patchify(pixel_values)
        if self.config.norm_pix_loss:
            target = normalize_patches(target.float())
        return masked_mse_loss(logits, target, mask)

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> MAEForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                As transformers' ViTMAE `noise`: patches are sorted by ascending noise and the lowest are kept.
                Drawn uniformly when not given; pass it for reproducible masks. Only with `mask_strategy="random"`.
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
                `mask_strategy` draws the masks.
        """
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        latent, mask, ids_restore, grid, hidden_states = self.forward_encoder(
            pixel_values, noise, interpolate_pos_encoding, output_hidden_states, bool_masked_pos
        )
        logits = self.forward_decoder(latent, ids_restore, grid)
        loss = self.forward_loss(pixel_values, logits, mask)
        output = MAEForPreTrainingOutput(
            loss=loss, logits=logits, mask=mask, ids_restore=ids_restore, hidden_states=hidden_states
        )
        return output if return_dict else output.to_tuple()


def sample_mae_inputs(config: MAEConfig, grid: tuple[int, int], generator: torch.Generator | None) -> dict:
    """One image's mask: transformers' ViTMAE `noise` with the random strategy (the lowest-noise patches stay
    visible), else `bool_masked_pos` from the configured strategy."""
    if config.mask_strategy == "random":
        return {"noise": torch.rand(grid[0] * grid[1], generator=generator)}
    return {"bool_masked_pos": config.masking_spec().sample(grid, generator)}


def _mae_target(config) -> str:
    pixels = "per-patch normalised pixels (`norm_pix_loss`)" if config.norm_pix_loss else "raw pixels"
    return f"{pixels} of masked patches, mean squared error"


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
        limitations=(
            "MAE features are known to need fine-tuning or a non-linear probe: linear-probe accuracy lags "
            "contrastive methods at equal compute.",
        ),
    ),
    paper=Recipe(base_lr=1.5e-4),
    # Small data (measured on the digits; benchmarks/RESULTS.md, issue 16): a one-block 128-wide decoder fine-tunes
    # as well as two blocks (90.6 vs 89.4, 3 seeds) and runs 13% faster; plain pixel targets, since
    # norm_pix_loss on upsampled 8x8 digits fine-tunes no better and reconstructs nothing a picture can show; 100
    # epochs (60: 87.3, 30: 79.8).
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
    ),
    sample_inputs=sample_mae_inputs,
    picture=RECONSTRUCTION_PICTURE,
    tiny_config=dict(
        **TINY_VIT,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
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
    "sample_mae_inputs",
]
