"""MaskFeat: Wei et al., "Masked Feature Prediction for Self-Supervised Visual Pre-Training" (CVPR 2022),
https://arxiv.org/abs/2112.09133.

Every patch is encoded, masked ones as a learned mask token (as in SimMIM and BEiT); a linear head predicts, for
each masked patch, its Histograms of Oriented Gradients, and the loss is their mean squared error. HOG is a fixed
hand-made feature (Dalal & Triggs, 2005): no tokenizer, no teacher. It is computed here as mmpretrain's
`HOGGenerator` does, with fixed torch convolutions, so this file alone (plus the shared ones) is the remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .backbone import channel_column, config_error
from .base import MIMModel, MIMPreTrainedModel, ViTEncoder
from .classification import MIMForImageClassification
from .losses import masked_mse_loss
from .masking import MaskedMIMConfig, sample_mask
from .spec import TINY_VIT, MethodCard, MethodSpec, Picture, Recipe, masking_rows


@dataclass
class MaskFeatForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Mean squared error between predicted and true HOG features, over the masked patches.
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, hog_size)`):
            Predicted HOG features of every patch (only the masked ones are trained).
        hog (`torch.FloatTensor` of shape `(batch_size, num_patches, hog_size)`):
            The targets: each patch's HOG, `num_channels * hog_nbins * (patch_size // hog_cell_size) ** 2` values.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
            The mask used, True for masked patches (drawn by the model when not given).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input then each block's output, each `(batch_size, 1 + num_patches, hidden_size)`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Each encoder block's attention weights, `(batch_size, num_heads, tokens, tokens)`, when
            `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hog: torch.FloatTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MaskFeatConfig(MaskedMIMConfig):
    r"""
    Configuration of a MaskFeat model: the encoder fields of [`MIMConfig`] (defaults: ViT-B/16 at 224 px), the
    masking fields of [`MaskedMIMConfig`] with MaskFeat's defaults, and the HOG target's.

    Args:
        mask_strategy (`str`, *optional*, defaults to `"block"`):
            MaskFeat masks blocks of patches, as BEiT; any strategy of [`MaskedMIMConfig`] works.
        mask_ratio (`float`, *optional*, defaults to 0.4):
            MaskFeat's ratio for images (Table 5 of the paper).
        hog_nbins (`int`, *optional*, defaults to 9):
            Orientation bins of each histogram, over the unsigned gradient angle [0, pi).
        hog_cell_size (`int`, *optional*):
            Side of a HOG cell in pixels; it must divide `patch_size`, and each patch's target holds
            `(patch_size // hog_cell_size) ** 2` cells, each channel's histogram L2-normalised per cell. Defaults to
            the paper's 8 where it divides `patch_size`, else the largest divisor of `patch_size` below 8 (4 for 4 px
            patches, 7 for 14 px).
        hog_gaussian_window (`bool`, *optional*, defaults to `True`):
            Weight each pixel's gradient by a Gaussian over its patch (std half the patch), as mmpretrain does.

    Example:

    ```python
    >>> from hf_mim import MaskFeatConfig, MaskFeatForPreTraining
    >>> model = MaskFeatForPreTraining(MaskFeatConfig())  # ViT-B/16, HOG of 8 px cells, 9 bins
    ```
    """

    model_type = "hf_mim_maskfeat"

    def __init__(
        self,
        mask_strategy: str = "block",
        mask_ratio: float = 0.4,
        hog_nbins: int = 9,
        hog_cell_size: int | None = None,
        hog_gaussian_window: bool = True,
        **kwargs,
    ):
        super().__init__(mask_strategy=mask_strategy, mask_ratio=mask_ratio, **kwargs)
        if hog_cell_size is None:
            hog_cell_size = default_hog_cell_size(self.patch_size)
        self.hog_nbins = hog_nbins
        self.hog_cell_size = hog_cell_size
        self.hog_gaussian_window = hog_gaussian_window
        if not isinstance(hog_nbins, int) or hog_nbins < 1:
            raise config_error("hog_nbins", hog_nbins, "a positive int")
        if not isinstance(hog_cell_size, int) or hog_cell_size < 1 or self.patch_size % hog_cell_size:
            raise config_error("hog_cell_size", hog_cell_size, f"a positive int dividing patch_size={self.patch_size}")

    @property
    def hog_size(self) -> int:
        """Target values per patch."""
        return self.num_channels * self.hog_nbins * (self.patch_size // self.hog_cell_size) ** 2


def default_hog_cell_size(patch_size: int) -> int:
    """MaskFeat's 8 px HOG cells where they divide the patch, else the largest divisor of the patch below 8."""
    return max(size for size in range(1, min(8, patch_size) + 1) if patch_size % size == 0)


def small_hog_cell_size(image_size, patch_size: int) -> int:
    """The small recipe's HOG cells: 4 px (measured on the digits' 4 px patches) where they divide the patch, else
    the config's default for the patch (the 6 px patches of a 48 px image take 6 px cells)."""
    if not isinstance(patch_size, int) or patch_size < 1:
        return patch_size  # invalid geometry: the config's own checks name the field
    return 4 if patch_size % 4 == 0 else default_hog_cell_size(patch_size)


class HOG(nn.Module):
    """Histograms of Oriented Gradients as fixed convolutions: (B, C, H, W) -> (B, C, nbins, H / cell, W / cell).

    Per channel: Sobel gradients (reflect padding), magnitude, unsigned orientation binned into `nbins`; each
    pixel votes its magnitude (Gaussian-weighted over each `window` x `window` patch when `window`) into its bin;
    votes are summed over cells; each cell's histogram is L2-normalised. mmpretrain's `HOGGenerator`."""

    def __init__(self, nbins: int = 9, cell_size: int = 8, window: int | None = 16):
        super().__init__()
        self.nbins, self.cell_size, self.window = nbins, cell_size, window

    @staticmethod
    def gaussian(window: int, device) -> torch.Tensor:
        """(window, window) weights, std window / 2, summing to 1 (mmpretrain's `get_gkern`)."""
        n = torch.arange(window, dtype=torch.float32, device=device)
        g = torch.exp(-0.5 * ((n - n.mean()) / (window // 2)) ** 2)
        kernel = g[:, None] * g[None, :]
        return kernel / kernel.sum()

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixel_values.shape
        x = F.pad(pixel_values.float(), (1, 1, 1, 1), mode="reflect")
        x = x.reshape(batch * channels, 1, height + 2, width + 2)  # every channel alone
        # fixed kernels, built here rather than held as buffers: nothing to save, load or initialise
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device)
        gx = F.conv2d(x, sobel.view(1, 1, 3, 3)).view(batch, channels, height, width)
        gy = F.conv2d(x, sobel.t().reshape(1, 1, 3, 3)).view(batch, channels, height, width)
        magnitude = torch.sqrt(gx**2 + gy**2)  # (B, C, H, W)
        phase = torch.atan2(gx, gy) / math.pi * self.nbins  # in [-nbins, nbins]; mod nbins: unsigned
        if self.window:
            weights = self.gaussian(self.window, x.device)
            magnitude = magnitude * weights.repeat(height // self.window, width // self.window)
        bins = phase.floor().long().remainder(self.nbins).unsqueeze(2)  # (B, C, 1, H, W)
        votes = torch.zeros(batch, channels, self.nbins, height, width, device=x.device)
        votes.scatter_add_(2, bins, magnitude.unsqueeze(2))
        cell = self.cell_size
        cells = votes.unfold(3, cell, cell).unfold(4, cell, cell).sum(dim=(-2, -1))  # (B, C, nbins, H/c, W/c)
        return F.normalize(cells, p=2, dim=2)


class MaskFeatPreTrainedModel(MIMPreTrainedModel):
    config_class = MaskFeatConfig


class MaskFeatModel(MIMModel):
    """The MaskFeat encoder without masking (what `AutoModel` returns); see [`MIMModel`]."""

    config_class = MaskFeatConfig


class MaskFeatForImageClassification(MIMForImageClassification):
    """MaskFeat encoder plus a linear head; see [`MIMForImageClassification`]."""

    config_class = MaskFeatConfig


class MaskFeatForPreTraining(MaskFeatPreTrainedModel):
    """MaskFeat for pretraining: mask-token encoder, a linear HOG head, MSE on the masked patches."""

    def __init__(self, config: MaskFeatConfig):
        super().__init__(config)
        self.vit = ViTEncoder.part_of(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.head = nn.Linear(config.hidden_size, config.hog_size)
        window = config.patch_size if config.hog_gaussian_window else None
        self.hog = HOG(config.hog_nbins, config.hog_cell_size, window)
        self.post_init()

    def hog_targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Each patch's HOG, (B, L, hog_size), cells of a patch in row-major order, channels and bins inside."""
        per_cell = self.config.patch_size // self.config.hog_cell_size
        hog = self.hog(pixel_values).flatten(1, 2)  # (B, C * nbins, H / cell, W / cell)
        # (B, rows, cols, C * nbins, cells per patch side, cells per patch side) -> (B, L, hog_size)
        patches = hog.unfold(2, per_cell, per_cell).unfold(3, per_cell, per_cell)
        return patches.permute(0, 2, 3, 4, 5, 1).flatten(1, 2).flatten(2)

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> MaskFeatForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; their HOG is the target.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                True for masked patches. Drawn from the configured `mask_strategy` when not given.
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Accept other resolutions by resampling the position embeddings.
            output_hidden_states (`bool`, *optional*):
                Also return the encoder's hidden states.
            return_dict (`bool`, *optional*):
                Return a [`MaskFeatForPreTrainingOutput`] rather than a tuple.
            output_attentions (`bool`, *optional*):
                Also return the encoder's attention weights, each block's `(batch_size, num_heads, tokens, tokens)`;
                `config.output_attentions` when not given.
        """
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        encoded = self.encode_with_mask_tokens(
            pixel_values, bool_masked_pos, interpolate_pos_encoding, output_hidden_states, output_attentions
        )
        logits = self.head(encoded.last_hidden_state[:, 1:])  # (B, L, hog_size)
        hog = self.hog_targets(pixel_values)
        loss = masked_mse_loss(logits, hog, encoded.bool_masked_pos)
        output = MaskFeatForPreTrainingOutput(
            loss=loss,
            logits=logits,
            hog=hog,
            bool_masked_pos=encoded.bool_masked_pos,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()

    def picture_panels(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The card's picture: the image, the masked input, the true HOG and the predicted HOG on the masked
        patches (the true one on the visible), each cell drawn as lines along its edge orientations, brighter for
        stronger bins. Each (B, 3 or 1, H, W) in [0, 1]."""
        out = self(pixel_values)
        mean = channel_column(self.config.image_mean, pixel_values)
        std = channel_column(self.config.image_std, pixel_values)
        image = (pixel_values * std + mean).clamp(0, 1)
        patch = self.config.patch_size
        rows, cols = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        mask = out.bool_masked_pos.view(-1, 1, rows, cols).float()
        mask = mask.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
        masked_input = image * (1 - mask) + 0.5 * mask
        predicted = torch.where(out.bool_masked_pos.unsqueeze(-1), out.logits.clamp_min(0), out.hog)
        return [image, masked_input, self._draw_hog(out.hog, rows, cols), self._draw_hog(predicted, rows, cols)]

    def _draw_hog(self, hog: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(B, L, hog_size) -> (B, 1, H, W): Dalal and Triggs' glyphs, the channels' histograms averaged."""
        config = self.config
        cell, nbins, per_side = config.hog_cell_size, config.hog_nbins, config.patch_size // config.hog_cell_size
        batch = hog.shape[0]
        # (B, rows, cols, cells, cells, C, nbins) -> mean over C -> (B, nbins, rows * cells, cols * cells)
        hist = hog.view(batch, rows, cols, per_side, per_side, config.num_channels, nbins).mean(dim=5)
        hist = hist.permute(0, 5, 1, 3, 2, 4).reshape(batch, nbins, rows * per_side, cols * per_side)
        # a line through each cell's centre, across its bin's gradient direction: the edge the bin stands for
        y, x = torch.meshgrid(torch.arange(cell) - (cell - 1) / 2, torch.arange(cell) - (cell - 1) / 2, indexing="ij")
        angles = (torch.arange(nbins) + 0.5) * math.pi / nbins
        distance = (x[None] * torch.sin(angles)[:, None, None] + y[None] * torch.cos(angles)[:, None, None]).abs()
        glyphs = (1 - distance).clamp(0, 1).to(hog.device)  # (nbins, cell, cell)
        # each cell's glyph: its bins' lines, weighted by the bins (a transposed convolution with stride `cell`)
        drawn = F.conv_transpose2d(hist.float(), glyphs.unsqueeze(1), stride=cell)  # (B, 1, H, W)
        return drawn / drawn.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


METHOD = MethodSpec(
    name="maskfeat",
    auto_classes={
        "AutoConfig": MaskFeatConfig,
        "AutoModel": MaskFeatModel,
        "AutoModelForPreTraining": MaskFeatForPreTraining,
        "AutoModelForImageClassification": MaskFeatForImageClassification,
    },
    card=MethodCard(
        display_name="MaskFeat",
        paper_title="Masked Feature Prediction for Self-Supervised Visual Pre-Training (Wei et al., 2022)",
        paper_url="https://arxiv.org/abs/2112.09133",
        paragraph=(
            "MaskFeat masks blocks of patches, encodes every patch (masked ones as a learned mask token) with a "
            "Vision Transformer, and a linear head predicts the Histograms of Oriented Gradients of the masked "
            "patches: a hand-made feature of local edge orientations, with no tokenizer or teacher to train."
        ),
        bibtex="""@inproceedings{wei2022masked,
  title     = {Masked Feature Prediction for Self-Supervised Visual Pre-Training},
  author    = {Wei, Chen and Fan, Haoqi and Xie, Saining and Wu, Chao-Yuan and Yuille, Alan and Feichtenhofer,
               Christoph},
  booktitle = {CVPR},
  year      = {2022}
}""",
        target=lambda config: (
            f"HOG of masked patches ({config.hog_nbins} bins, {config.hog_cell_size} px cells), mean squared error"
        ),
        architecture=masking_rows,
    ),
    # MaskFeat's ViT-B recipe: lr 8e-4 at batch 2048, AdamW (0.9, 0.999), crops of scale 0.5-1
    paper=Recipe(base_lr=1e-4),
    # 4 px patches on the digits: 4 px cells, one histogram per patch; BEiT's small-grid minimum block
    small=Recipe(base_lr=1e-2, config=dict(hog_cell_size=small_hog_cell_size, mask_min_num_patches=4), epochs=50),
    betas=(0.9, 0.999),
    crop_scale=(0.5, 1.0),
    sample_inputs=sample_mask,
    picture=Picture(
        kind="panels",
        file="hog.png",
        alt="HOG targets and predictions",
        caption="Per row: the image, the masked input, its HOG (each cell drawn as lines along its edge "
        "orientations), and the predicted HOG on the masked patches beside the true HOG of the visible ones.",
    ),
    tiny_config=dict(**TINY_VIT, hog_cell_size=4, mask_min_num_patches=2),
)

__all__ = [
    "HOG",
    "METHOD",
    "MaskFeatConfig",
    "MaskFeatForImageClassification",
    "MaskFeatForPreTraining",
    "MaskFeatForPreTrainingOutput",
    "MaskFeatModel",
    "MaskFeatPreTrainedModel",
]
