"""BEiT: Bao et al., "BEiT: BERT Pre-Training of Image Transformers" (2021), https://arxiv.org/abs/2106.08254.

Block-wise masked patches are replaced by a mask token, the encoder sees every token, and a linear head predicts, at
each masked position, the discrete visual token a frozen tokenizer assigns to the original patch (cross-entropy on
masked positions only). The tokenizer is a [`VisualTokenizer`] trained here (the original borrows DALL-E's); its
weights are part of the BEiT checkpoint, so `from_pretrained` needs nothing else.

Differences from the paper's model, on purpose: the shared ViT backbone uses absolute (sin-cos by default)
position embeddings rather than BEiT's shared relative position bias; LayerScale (0.1) is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .backbone import channel_column, config_error
from .base import MIMModel, MIMPreTrainedModel, ViTEncoder
from .classification import MIMForImageClassification
from .losses import masked_cross_entropy
from .masking import MaskedMIMConfig, sample_mask
from .spec import TINY_VIT, MethodCard, MethodSpec, Picture, Recipe, masking_rows
from .tokenizer import TokenMaps, VisualTokenizer, VisualTokenizerConfig


@dataclass
class BEiTForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Cross-entropy of the predicted visual tokens at the masked positions.
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, vocab_size)`):
            Token scores at every patch position (only masked ones enter the loss).
        labels (`torch.LongTensor` of shape `(batch_size, num_patches)`):
            The visual-token ids of every patch: given, or computed by the frozen tokenizer.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`):
            The mask used, True for masked patches.
        accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of masked positions whose most likely token is the label.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Encoder input then each block's output.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Each encoder block's attention weights, `(batch_size, num_heads, tokens, tokens)`, when
            `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    bool_masked_pos: torch.BoolTensor | None = None
    accuracy: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


logger = logging.getLogger(__name__)


class BEiTConfig(MaskedMIMConfig):
    r"""
    Configuration of a BEiT model: the encoder fields of [`MIMConfig`] (defaults: ViT-B/16 at 224 px), the masking
    fields of [`MaskedMIMConfig`] with BEiT's defaults, and the visual tokenizer.

    Args:
        vocab_size (`int`, *optional*, defaults to 8192):
            Number of visual tokens the head predicts; must equal the tokenizer's `vocab_size`.
        tokenizer_name_or_path (`str`, *optional*):
            Folder or Hub id of a trained [`VisualTokenizer`]. Read once, when a model is first built from this
            config (its config then lands in `tokenizer_config` and its weights in the BEiT checkpoint); models
            loaded with `from_pretrained` never read it again. Kept as a record of where the tokenizer came from.
        tokenizer_config (`dict`, *optional*):
            The tokenizer's configuration ([`VisualTokenizerConfig`] as a dict), filled in when the model is built.
            When neither this nor `tokenizer_name_or_path` is set, the model builds a small, randomly initialised,
            frozen tokenizer from this config's image fields and `vocab_size` (`default_tokenizer_config`): the
            model runs, but its targets are meaningless. That is a smoke-test setting only, and the model warns.
        mask_strategy (`str`, *optional*, defaults to `"block"`):
            BEiT's block-wise masking; any strategy of [`MaskedMIMConfig`] works.
        mask_ratio (`float`, *optional*, defaults to 0.4):
            About 40% of the patches, as BEiT (75 of 196).
        layer_scale_init_value (`float`, *optional*, defaults to 0.1):
            LayerScale on every residual branch, BEiT's value (see [`MIMConfig`]).

    Example:

    ```python
    >>> from hf_mim import BEiTConfig, BEiTForPreTraining
    >>> model = BEiTForPreTraining(BEiTConfig(tokenizer_name_or_path="outputs/tokenizer"))
    ```
    """

    model_type = "hf_mim_beit"

    def __init__(
        self,
        vocab_size: int = 8192,
        tokenizer_name_or_path: str | None = None,
        tokenizer_config: dict | None = None,
        mask_strategy: str = "block",
        mask_ratio: float = 0.4,
        layer_scale_init_value: float = 0.1,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.tokenizer_config = tokenizer_config
        super().__init__(
            mask_strategy=mask_strategy,
            mask_ratio=mask_ratio,
            layer_scale_init_value=layer_scale_init_value,
            **kwargs,
        )
        self._require_positive_ints("vocab_size")
        if self.tokenizer_config is not None:
            self.check_tokenizer(self.tokenizer_config)

    def check_tokenizer(self, tokenizer_config: dict | VisualTokenizerConfig) -> None:
        """Raise unless the tokenizer's vocabulary and token grid match this model's head and patch grid."""
        if isinstance(tokenizer_config, dict):
            tokenizer_config = VisualTokenizerConfig.from_dict(tokenizer_config)
        if tokenizer_config.vocab_size != self.vocab_size:
            raise config_error(
                "vocab_size", self.vocab_size, f"must equal the tokenizer's vocab_size={tokenizer_config.vocab_size}"
            )
        if tokenizer_config.patch_size != self.patch_size or tokenizer_config.num_channels != self.num_channels:
            raise config_error(
                "tokenizer_config",
                f"patch_size={tokenizer_config.patch_size}, num_channels={tokenizer_config.num_channels}",
                f"the tokenizer must give one token per {self.patch_size}x{self.patch_size} patch of "
                f"{self.num_channels}-channel images, to match the ViT's patch grid",
            )

    def default_tokenizer_config(self) -> VisualTokenizerConfig:
        """The random tokenizer of a config that names none: a small one (8 channels, 8-dimensional codes, no
        residual blocks), since its untrained codes carry no information at any size."""
        return VisualTokenizerConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            vocab_size=self.vocab_size,
            embedding_dim=8,
            hidden_channels=8,
            num_res_blocks=0,
            image_mean=self.image_mean,
            image_std=self.image_std,
        )


class BEiTPreTrainedModel(MIMPreTrainedModel):
    config_class = BEiTConfig


class BEiTModel(MIMModel):
    """The BEiT encoder without masking (what `AutoModel` returns); see [`MIMModel`]."""

    config_class = BEiTConfig


class BEiTForImageClassification(MIMForImageClassification):
    """BEiT encoder plus a linear head; see [`MIMForImageClassification`]."""

    config_class = BEiTConfig


class BEiTForPreTraining(BEiTPreTrainedModel):
    """BEiT for pretraining: mask-token encoder, linear head over the visual vocabulary, a frozen tokenizer.

    `BEiTForPreTraining(config, tokenizer=trained_tokenizer)` attaches a tokenizer object; otherwise the config's
    `tokenizer_name_or_path` is loaded, or (smoke tests only) a random one is built.
    """

    def __init__(self, config: BEiTConfig, tokenizer: VisualTokenizer | None = None):
        super().__init__(config)
        self.vit = ViTEncoder.part_of(config)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)

        source = tokenizer
        if source is None and config.tokenizer_config is None:
            if config.tokenizer_name_or_path:
                source = load_tokenizer(config.tokenizer_name_or_path)
            else:
                logger.warning(
                    "BEiTConfig has no tokenizer: building a random frozen one. Its tokens carry no information; "
                    "use this for smoke tests only, and train a tokenizer with `hf-mim pretrain --method "
                    "visual-tokenizer` for real runs."
                )
                config.tokenizer_config = config.default_tokenizer_config().to_fields()
        if source is not None:
            config.check_tokenizer(source.config)
            config.tokenizer_config = source.config.to_fields()
        # the tokenizer holds its own config: it follows this model's attention implementation, as transformers'
        # submodels follow their parent's (it has no attention of its own)
        tokenizer_config = VisualTokenizerConfig.from_dict(
            config.tokenizer_config, attn_implementation=config._attn_implementation
        )
        self.tokenizer = VisualTokenizer(tokenizer_config)
        self.tokenizer.requires_grad_(False)
        self.post_init()
        if source is not None:
            # after post_init, which would otherwise re-initialise the loaded weights
            self.tokenizer.load_state_dict(source.state_dict())
        self.tokenizer.eval()

    def train(self, mode: bool = True):
        """The tokenizer stays in eval mode whatever the model's mode: its codebook is frozen."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    def tokenizer_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Re-normalise images from this model's mean/std to the tokenizer's, where they differ."""
        tok = self.tokenizer.config
        if list(tok.image_mean) == list(self.config.image_mean) and list(tok.image_std) == list(self.config.image_std):
            return pixel_values
        ours = self.config
        raw = pixel_values * channel_column(ours.image_std, pixel_values) + channel_column(
            ours.image_mean, pixel_values
        )
        return (raw - channel_column(tok.image_mean, raw)) / channel_column(tok.image_std, raw)

    def visual_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, rows * cols) target ids from the frozen tokenizer."""
        return self.tokenizer.get_codebook_indices(self.tokenizer_inputs(pixel_values))

    @torch.no_grad()
    def picture_tokens(self, pixel_values: torch.Tensor) -> TokenMaps:
        """The token picture's maps, masks drawn as `forward` draws them: the tokenizer's ids, the masks, the ids
        predicted, and the tokenizer's decoding of the true ids and of the ids with the masked ones predicted."""
        output = self(pixel_values)
        token_ids, masked = output.labels, output.bool_masked_pos.bool()
        predicted = output.logits.argmax(-1)
        grid = self.tokenizer.check_pixel_values(self.tokenizer_inputs(pixel_values))
        decoded = [
            self.tokenizer.decode_ids(token_ids, grid),
            self.tokenizer.decode_ids(torch.where(masked, predicted, token_ids), grid),
        ]
        tokenizer = self.tokenizer.config
        return TokenMaps(token_ids, decoded, tokenizer.image_mean, tokenizer.image_std, masked, predicted)

    def _check_labels(self, labels: torch.Tensor, shape: tuple[int, int]) -> None:
        if labels.ndim == 1:
            raise ValueError(
                f"labels must have shape (batch, num_patches) = {shape}: the token id of every patch (transformers' "
                "BeitForMaskedImageModeling takes the masked ones flattened; hf_mim takes the whole grid)"
            )
        if tuple(labels.shape) != shape:
            raise ValueError(
                f"labels must match the patch grid, shape (batch, num_patches) = {shape}; got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
        if torch.compiler.is_compiling():
            # Reading the ids back would split the compiled graph and sync the device on every step; the check
            # runs on the device instead (an error when the step completes, not a ValueError here).
            in_vocabulary = ((labels >= 0) & (labels < self.config.vocab_size)).all()
            torch._assert_async(in_vocabulary, f"labels hold token ids outside [0, {self.config.vocab_size - 1}]")
            return
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(
                f"labels hold token ids in [{low}, {high}], outside the vocabulary [0, {self.config.vocab_size - 1}]"
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> BEiTForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
                True for masked patches, as in transformers. Drawn from the configured `mask_strategy` (block-wise
                by default) when not given.
            labels (`torch.LongTensor` of shape `(batch_size, num_patches)`, *optional*):
                Visual-token ids of every patch, for example precomputed with `visual_tokens`. Computed by the
                frozen tokenizer when not given. Ids outside `[0, vocab_size)` or a shape other than the patch grid
                raise.
            interpolate_pos_encoding (`bool`, *optional*, defaults to `False`):
                Accept other resolutions by resampling the position embeddings.
            output_hidden_states (`bool`, *optional*):
                Also return the encoder's hidden states.
            return_dict (`bool`, *optional*):
                Return a [`BEiTForPreTrainingOutput`] rather than a tuple.
            output_attentions (`bool`, *optional*):
                Also return the encoder's attention weights, each block's `(batch_size, num_heads, tokens, tokens)`;
                `config.output_attentions` when not given.
        """
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        grid = self.vit.input_grid(pixel_values, interpolate_pos_encoding)
        shape = (pixel_values.shape[0], grid[0] * grid[1])
        # targets first: bad labels fail before any encoder work
        if labels is None:
            labels = self.visual_tokens(pixel_values)
            if tuple(labels.shape) != shape:
                raise ValueError(f"the tokenizer gives {tuple(labels.shape)} tokens but the patch grid is {shape}")
        else:
            self._check_labels(labels, shape)
        encoded = self.encode_with_mask_tokens(
            pixel_values, bool_masked_pos, interpolate_pos_encoding, output_hidden_states, output_attentions
        )
        bool_masked_pos = encoded.bool_masked_pos
        logits = self.lm_head(encoded.last_hidden_state[:, 1:])
        loss = masked_cross_entropy(logits, labels, bool_masked_pos)
        mask = bool_masked_pos.bool()
        hits = (logits.detach().argmax(-1) == labels) & mask
        accuracy = hits.sum() / mask.sum()  # NaN with nothing masked, as the mean of an empty selection was
        output = BEiTForPreTrainingOutput(
            loss=loss,
            logits=logits,
            labels=labels,
            bool_masked_pos=bool_masked_pos,
            accuracy=accuracy,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return output if return_dict else output.to_tuple()


def tokenizer_config_of(path: str) -> VisualTokenizerConfig:
    """The config of the visual tokenizer saved at `path`; a ValueError naming the path when config.json is of
    another model type (a pretrained MAE's folder would otherwise load as a tokenizer config with defaults)."""
    fields, _ = VisualTokenizerConfig.get_config_dict(path)
    model_type = fields.get("model_type")
    if model_type != VisualTokenizerConfig.model_type:
        raise ValueError(
            f"tokenizer_name_or_path={path!r} is invalid: its config.json has model_type={model_type!r}; allowed: a "
            f"visual tokenizer ({VisualTokenizerConfig.model_type!r}), trained with `hf-mim pretrain --method "
            "visual-tokenizer`"
        )
    return VisualTokenizerConfig.from_dict(fields)


def load_tokenizer(path: str) -> VisualTokenizer:
    """A trained visual tokenizer, as strictly as hf_mim loads any checkpoint: its own model type, safetensors only
    (a folder someone handed over must not be unpickled), no code from the folder, and every tensor from the file
    (missing ones would leave a random tokenizer, and BEiT would learn to predict noise). `hf_mim.loading` does the
    same for the commands, but this file ships as remote code, which imports only torch and transformers."""
    config = tokenizer_config_of(path)
    tokenizer, info = VisualTokenizer.from_pretrained(
        path, config=config, use_safetensors=True, trust_remote_code=False, output_loading_info=True
    )
    missing = sorted(info["missing_keys"]) + sorted(info.get("mismatched_keys") or [])
    if missing:
        raise ValueError(
            f"tokenizer_name_or_path={path!r} is invalid: {len(missing)} of the tokenizer's tensors are not in its "
            f"weights (for example {', '.join(map(str, missing[:3]))}); allowed: a complete trained visual tokenizer"
        )
    return tokenizer


def _with_tokenizer_vocabulary(fields: dict) -> dict:
    """The head predicts the tokenizer's vocabulary: a run naming a tokenizer takes its `vocab_size`."""
    path = fields.get("tokenizer_name_or_path")
    if path and "vocab_size" not in fields:
        return {**fields, "vocab_size": tokenizer_config_of(path).vocab_size}
    return fields


BEIT_BIBTEX = """@inproceedings{bao2022beit,
  title     = {{BEiT}: {BERT} Pre-Training of Image Transformers},
  author    = {Bao, Hangbo and Dong, Li and Piao, Songhao and Wei, Furu},
  booktitle = {ICLR},
  year      = {2022}
}"""

TOKENS_PICTURE = Picture(
    kind="tokens",
    file="tokens.png",
    alt="Visual tokens",
    caption="Per row: the image, the masked input, the tokenizer's token map (one colour per token id), the "
    "predicted map (masked patches in the colour of the predicted token, darkened where it is wrong), and the "
    "tokenizer's decoding of the true tokens and of the tokens with the masked ones predicted.",
)

METHOD = MethodSpec(
    name="beit",
    auto_classes={
        "AutoConfig": BEiTConfig,
        "AutoModel": BEiTModel,
        "AutoModelForPreTraining": BEiTForPreTraining,
        "AutoModelForImageClassification": BEiTForImageClassification,
    },
    card=MethodCard(
        display_name="BEiT",
        paper_title="BEiT: BERT Pre-Training of Image Transformers (Bao et al., 2021)",
        paper_url="https://arxiv.org/abs/2106.08254",
        paragraph=(
            "BEiT maps every patch to a discrete visual token with a separately trained tokenizer, masks blocks "
            "of patches, and trains the Vision Transformer to predict the token ids of the masked patches with "
            "a cross-entropy loss, as BERT does for words."
        ),
        bibtex=BEIT_BIBTEX,
        target=lambda config: (
            f"discrete visual-token ids of masked patches (vocabulary {config.vocab_size}), cross-entropy"
        ),
        limitations=(
            "The targets are only as good as the visual tokenizer they come from; hf_mim's BEiT has no relative "
            "position bias.",
        ),
        architecture=masking_rows,
    ),
    # BEiT's ViT-B recipe: lr 1.5e-3 at batch 2048, AdamW (0.9, 0.999), crops of scale 0.08-1
    paper=Recipe(base_lr=1.875e-4),
    # an 8x8 grid: BEiT's 16-patch minimum block would be a quarter of the image
    small=Recipe(base_lr=1e-2, config=dict(mask_min_num_patches=4), epochs=50),
    betas=(0.9, 0.999),
    crop_scale=(0.08, 1.0),
    sample_inputs=sample_mask,
    picture=TOKENS_PICTURE,
    tiny_config=dict(**TINY_VIT, vocab_size=16, mask_min_num_patches=2),
    prepare_config=_with_tokenizer_vocabulary,
)

__all__ = [
    "METHOD",
    "BEiTForPreTrainingOutput",
    "BEiTConfig",
    "BEiTPreTrainedModel",
    "BEiTModel",
    "BEiTForPreTraining",
    "BEiTForImageClassification",
]
