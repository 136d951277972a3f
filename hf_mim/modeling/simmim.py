"""SimMIM: Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling" (2021), https://arxiv.org/abs/2111.09886.

Masked patches' embeddings are replaced by a learnable mask token, the encoder sees every token, a one-layer head
(1x1 convolution and pixel shuffle) predicts the raw pixels of the whole image, and the loss is the L1 error on the
masked pixels only. Same computation, same parameter layout once converted, as transformers'
`ViTForMaskedImageModeling`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .backbone import config_error
from .base import MIMModel, MIMPreTrainedModel, ViTEncoder
from .classification import MIMForImageClassification
from .heads import PixelShuffleHead
from .losses import masked_pixel_l1_loss
from .masking import MaskedMIMConfig, sample_mask
from .spec import RECONSTRUCTION_PICTURE, TINY_VIT, MethodCard, MethodSpec, Recipe, masking_rows


@dataclass
class SimMIMForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            L1 loss over the pixels of the masked patches.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Predicted pixels of the whole image (in the normalised space of `pixel_values`), transformers'
            `MaskedImageModelingOutput.reconstruction`.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
            The mask used, True for masked patches (drawn by the model when not given).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input then each block's output, each `(batch_size, 1 + num_patches, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Each encoder block's attention weights, `(batch_size, num_heads, tokens, tokens)`, when
            `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class SimMIMConfig(MaskedMIMConfig):
    r"""
    Configuration of a SimMIM model: the encoder fields of [`MIMConfig`] (defaults: ViT-B/16 at 224 px), the
    masking fields of [`MaskedMIMConfig`] with SimMIM's defaults, and the head's stride.

    Args:
        encoder_stride (`int`, *optional*):
            Upsampling factor of the pixel-shuffle head, transformers' field name. It must equal `patch_size`, so
            that the reconstruction has the input's size (a mismatch is the shape error of transformers #23832,
            caught here at config time). Defaults to `patch_size`.
        mask_strategy (`str`, *optional*, defaults to `"mask_patch"`):
            SimMIM's random mask patches; any strategy of [`MaskedMIMConfig`] works.
        mask_ratio (`float`, *optional*, defaults to 0.6):
            SimMIM's ratio for ViTs.
        mask_patch_size (`int`, *optional*):
            Side of SimMIM's mask squares in pixels; a multiple of `patch_size` that divides the image sides. By
            default the paper's best, 32 (Table 1), where 32 px squares cut both sides of the image into at least
            4; otherwise the largest multiple of `patch_size` that does (8 px on a 32 px image with 4 px patches),
            or `patch_size` itself.

    Example:

    ```python
    >>> from hf_mim import SimMIMConfig, SimMIMForPreTraining
    >>> model = SimMIMForPreTraining(SimMIMConfig(image_size=192))  # ViT-B/16 at SimMIM's 192 px
    ```
    """

    model_type = "hf_mim_simmim"

    def __init__(
        self,
        encoder_stride: int | None = None,
        mask_strategy: str = "mask_patch",
        mask_ratio: float = 0.6,
        mask_patch_size: int | None = None,
        **kwargs,
    ):
        if mask_patch_size is None:
            mask_patch_size = default_mask_patch_size(kwargs.get("image_size", 224), kwargs.get("patch_size", 16))
        super().__init__(mask_strategy=mask_strategy, mask_ratio=mask_ratio, mask_patch_size=mask_patch_size, **kwargs)
        self.encoder_stride = self.patch_size if encoder_stride is None else encoder_stride
        if self.encoder_stride != self.patch_size:
            raise config_error(
                "encoder_stride",
                self.encoder_stride,
                f"must equal patch_size={self.patch_size}, or the reconstruction would not have the input's size",
            )


def _sides(image_size, patch_size) -> list[int] | None:
    """Both sides of `image_size`, or None for an invalid geometry (the config's own checks name the field)."""
    sides = list(image_size) if isinstance(image_size, (list, tuple)) else [image_size, image_size]
    if not isinstance(patch_size, int) or patch_size < 1 or not all(isinstance(s, int) for s in sides):
        return None
    return sides


def default_mask_patch_size(image_size, patch_size: int) -> int:
    """SimMIM's 32 px mask squares where they cut both sides of the image into at least 4, else the largest multiple
    of the patch size that does, else the patch size (plain random patches)."""
    sides = _sides(image_size, patch_size)
    if sides is None:
        return 32
    for size in [32, *range(32 - 32 % patch_size, patch_size - 1, -patch_size)]:
        if size % patch_size == 0 and all(side % size == 0 and side // size >= 4 for side in sides):
            return size
    return patch_size


def small_mask_patch_size(image_size, patch_size: int) -> int:
    """The small recipe's mask squares: 2x2 patches where they tile the patch grid (8 px on a 32 px image of 4 px
    patches), else single patches: the 7x7 grid of a 28 px image has no 2x2 tiling."""
    sides = _sides(image_size, patch_size)
    if sides is None:
        return patch_size
    return 2 * patch_size if all(side % (2 * patch_size) == 0 for side in sides) else patch_size


class SimMIMPreTrainedModel(MIMPreTrainedModel):
    config_class = SimMIMConfig


class SimMIMModel(MIMModel):
    """The SimMIM encoder without masking (what `AutoModel` returns); see [`MIMModel`]."""

    config_class = SimMIMConfig


class SimMIMForImageClassification(MIMForImageClassification):
    """SimMIM encoder plus a linear head; see [`MIMForImageClassification`]."""

    config_class = SimMIMConfig


class SimMIMForPreTraining(SimMIMPreTrainedModel):
    """SimMIM for pretraining: mask-token encoder, pixel-shuffle head, masked L1 loss."""

    def __init__(self, config: SimMIMConfig):
        super().__init__(config)
        self.vit = ViTEncoder.part_of(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.decoder = PixelShuffleHead(config.hidden_size, config.encoder_stride, config.num_channels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> SimMIMForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; they are also the reconstruction target.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                True for masked patches, as in transformers' `ViTForMaskedImageModeling`. Drawn from the configured
                `mask_strategy` when not given (so the loss is always defined, unlike transformers').
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Accept other resolutions by resampling the position embeddings.
            output_hidden_states (`bool`, *optional*):
                Also return the encoder's hidden states.
            return_dict (`bool`, *optional*):
                Return a [`SimMIMForPreTrainingOutput`] rather than a tuple.
            output_attentions (`bool`, *optional*):
                Also return the encoder's attention weights, each block's `(batch_size, num_heads, tokens, tokens)`;
                `config.output_attentions` when not given.
        """
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        encoded = self.encode_with_mask_tokens(
            pixel_values, bool_masked_pos, interpolate_pos_encoding, output_hidden_states, output_attentions
        )
        reconstruction = self.decoder(encoded.last_hidden_state, encoded.grid)
        loss = masked_pixel_l1_loss(reconstruction, pixel_values, encoded.bool_masked_pos, self.config.patch_size)
        output = SimMIMForPreTrainingOutput(
            loss=loss,
            reconstruction=reconstruction,
            bool_masked_pos=encoded.bool_masked_pos,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def reconstruct_pixels(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction (B, C, H, W) in the input's normalised scale, bool_masked_pos (B, L)), masks drawn as
        `forward` draws them: the reconstruction picture and error."""
        output = self(pixel_values)
        return output.reconstruction.float(), output.bool_masked_pos.bool()


METHOD = MethodSpec(
    name="simmim",
    auto_classes={
        "AutoConfig": SimMIMConfig,
        "AutoModel": SimMIMModel,
        "AutoModelForPreTraining": SimMIMForPreTraining,
        # transformers' ViTForMaskedImageModeling is SimMIM too: the same inputs and `reconstruction` output
        "AutoModelForMaskedImageModeling": SimMIMForPreTraining,
        "AutoModelForImageClassification": SimMIMForImageClassification,
    },
    card=MethodCard(
        display_name="SimMIM",
        paper_title="SimMIM: A Simple Framework for Masked Image Modeling (Xie et al., 2021)",
        paper_url="https://arxiv.org/abs/2111.09886",
        paragraph=(
            "SimMIM replaces the embeddings of masked patches with a learnable mask token, encodes every patch, "
            "and a one-layer head (1x1 convolution and pixel shuffle) predicts the pixels; the loss is the L1 "
            "error on the masked pixels."
        ),
        bibtex="""@inproceedings{xie2022simmim,
  title     = {SimMIM: A Simple Framework for Masked Image Modeling},
  author    = {Xie, Zhenda and Zhang, Zheng and Cao, Yue and Lin, Yutong and Bao, Jianmin and Yao, Zhuliang
               and Dai, Qi and Hu, Han},
  booktitle = {CVPR},
  year      = {2022}
}""",
        target=lambda config: "raw (normalised-input) pixels of masked patches, L1",
        architecture=masking_rows,
    ),
    # SimMIM's ViT-B recipe: lr 8e-4 at batch 2048, AdamW (0.9, 0.999), crops of scale 0.67-1
    paper=Recipe(base_lr=1e-4),
    # 32 px mask squares would be a whole 32 px image; 2x2-patch squares, as SimMIM's 32 px squares of ViT-B/16
    small=Recipe(base_lr=1e-2, config=dict(mask_patch_size=small_mask_patch_size), epochs=50),
    betas=(0.9, 0.999),
    crop_scale=(0.67, 1.0),
    sample_inputs=sample_mask,
    picture=RECONSTRUCTION_PICTURE,
    tiny_config=dict(**TINY_VIT, mask_patch_size=8),
)

__all__ = [
    "METHOD",
    "SimMIMForPreTrainingOutput",
    "SimMIMConfig",
    "SimMIMPreTrainedModel",
    "SimMIMModel",
    "SimMIMForPreTraining",
    "SimMIMForImageClassification",
]
