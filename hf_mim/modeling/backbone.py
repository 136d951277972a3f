"""The pieces of the ViT encoder every hf_mim method shares (the encoder itself, a `PreTrainedModel`, is in
`base.py`).

Parameter names follow timm and facebookresearch/mae (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.attn.qkv``, ...) so that official checkpoints map onto it by prefixing alone.

Shape conventions: B batch, C channels, L patches on the grid, K visible patches, D width.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

POSITION_EMBEDDING_TYPES = ("sincos", "learned")
# Upper bounds on what a config may describe: 10x ViT-22B's parameters, and 16x the patches of a 1,024 px image in
# 4 px patches. Nothing real comes near them; a typo or an edited config.json does.
MAX_PARAMETERS = 2 * 10**11
MAX_TOKENS = 2**20
POOLING_TYPES = ("cls", "mean")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_2tuple(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"expected an int or a pair of ints, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def patch_grid(config) -> tuple[int, int]:
    """(rows, columns) of patches of any ViT config with `image_size` and `patch_size`: hf_mim's (`grid_size`) and
    other libraries' (transformers' ViTMAEConfig, which a benchmark's peer method trains)."""
    height, width = to_2tuple(config.image_size)
    return height // config.patch_size, width // config.patch_size


def config_error(field: str, value, allowed: str) -> ValueError:
    """The one shape of config error: which field, what it was, what is allowed."""
    return ValueError(f"{field}={value!r} is invalid: {allowed}")


class ImageFieldsMixin:
    """`image_size`, `patch_size`, `num_channels`, `image_mean` and `image_std` handling shared by the configs of
    models that cut images into patches (the ViT configs and the visual tokenizer's)."""

    def __init_subclass__(cls, **kwargs):
        own_init = "__init__" in cls.__dict__
        super().__init_subclass__(**kwargs)
        if not own_init:
            # transformers 5 turns a config subclass without an `__init__` into a dataclass with a generated one,
            # which never calls its parent's: every field the parent sets in `__init__` would be missing. A
            # subclass that only renames (`model_type = "my_mae"`) keeps its parent's `__init__`.
            cls.__init__ = next(base.__dict__["__init__"] for base in cls.__mro__[1:] if "__init__" in base.__dict__)

    def _set_normalization(
        self, image_mean: Sequence[float] | float | None, image_std: Sequence[float] | float | None
    ) -> None:
        if image_mean is None:
            image_mean = IMAGENET_MEAN if self.num_channels == 3 else (0.5,) * self.num_channels
        if image_std is None:
            image_std = IMAGENET_STD if self.num_channels == 3 else (0.5,) * self.num_channels
        for field, value in (("image_mean", image_mean), ("image_std", image_std)):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                # one value for every channel, as image processors take it (num_channels is checked later)
                channels = self.num_channels if isinstance(self.num_channels, int) and self.num_channels > 0 else 1
                value = [value] * channels
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise config_error(field, value, "a float or one float per channel")
            try:
                setattr(self, field, [float(v) for v in value])
            except (TypeError, ValueError):
                raise config_error(field, value, "a float or one float per channel") from None

    def _check_field_types(self) -> None:
        """Refuse a field of another type than its `__init__` annotation allows: `{"norm_pix_loss": "false"}` in a
        JSON config would store the string, which reads as true; 0.5 for an int field would be cut. bool, int,
        float (an int is a float here) and str annotations are checked, with `| None` allowing None."""
        checks = {
            "bool": lambda v: isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
        }
        seen = set()
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None or not issubclass(cls, ImageFieldsMixin):
                continue
            for name, parameter in inspect.signature(init).parameters.items():
                annotation = parameter.annotation
                if name in seen or not isinstance(annotation, str) or not hasattr(self, name):
                    continue
                seen.add(name)
                kinds = [part.strip() for part in annotation.split("|")]
                optional = "None" in kinds
                kinds = [kind for kind in kinds if kind != "None"]
                if len(kinds) != 1 or kinds[0] not in checks:
                    continue
                value = getattr(self, name)
                if not (checks[kinds[0]](value) or (optional and value is None)):
                    raise config_error(name, value, f"a {kinds[0]}" + (" or null" if optional else ""))

    def _validate_image_fields(self) -> None:
        self._check_field_types()
        if not isinstance(self.patch_size, int) or isinstance(self.patch_size, bool) or self.patch_size < 1:
            raise config_error("patch_size", self.patch_size, "a positive int")
        sides = self.image_size if isinstance(self.image_size, (list, tuple)) else [self.image_size]
        if not all(isinstance(side, int) and not isinstance(side, bool) for side in sides):
            # to_2tuple would turn 32.5 into 32 without a word
            raise config_error("image_size", self.image_size, "an int or a pair (height, width) of ints")
        try:
            height, width = to_2tuple(self.image_size)
        except (TypeError, ValueError):
            raise config_error("image_size", self.image_size, "an int or a pair (height, width)") from None
        if height < 1 or width < 1 or height % self.patch_size or width % self.patch_size:
            raise config_error(
                "image_size", self.image_size, f"both sides must be positive multiples of patch_size={self.patch_size}"
            )
        self._require_positive_ints("num_channels")
        for field in ("image_mean", "image_std"):
            value = getattr(self, field)
            if len(value) != self.num_channels:
                raise config_error(field, value, f"one value per channel (num_channels={self.num_channels})")
        if any(s <= 0 for s in self.image_std):
            raise config_error("image_std", self.image_std, "positive values")

    def _require_positive_ints(self, *fields: str) -> None:
        for field in fields:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise config_error(field, value, "a positive int")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches per column and per row at the configured `image_size`."""
        return patch_grid(self)

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols


class MIMConfig(ImageFieldsMixin, PretrainedConfig):
    r"""
    Fields shared by every hf_mim method: they describe the ViT encoder. Method configs (for example
    [`MAEConfig`]) subclass this one and add their own fields. Names follow transformers' `ViTMAEConfig`.

    Args:
        image_size (`int` or `tuple[int, int]`, *optional*, defaults to 224):
            Input resolution the position embeddings are laid out for, as `size` or `(height, width)`.
        patch_size (`int`, *optional*, defaults to 16):
            Side of the square patches; must divide both sides of `image_size`.
        num_channels (`int`, *optional*, defaults to 3):
            Channels of the input images.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of transformer blocks in the encoder.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per encoder block; must divide `hidden_size`.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Hidden width of the encoder MLPs.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the MLPs, any key of `transformers.activations.ACT2FN`.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after the attention projection and the MLP (0 for pretraining, as in MAE).
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic-depth rate of the last block, rising linearly from 0 at the first (fine-tuning uses 0.1).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the CLS token, mask tokens and learned position
            embeddings. Linear layers use Xavier-uniform, as in MAE.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every LayerNorm (MAE's value; transformers' ViTMAE uses 1e-12).
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query, key and value projections have a bias.
        layer_scale_init_value (`float`, *optional*, defaults to 0.0):
            Initial value of LayerScale's per-channel gains on each residual branch (CaiT; BEiT uses 0.1). 0 turns
            LayerScale off (MAE, SimMIM).
        position_embedding_type (`str`, *optional*, defaults to `"sincos"`):
            `"sincos"`: fixed 2-D sine-cosine embeddings (MAE), stored in the checkpoint but never trained.
            `"learned"`: trained embeddings initialised from a truncated normal.
        pooling (`str`, *optional*, defaults to `"cls"`):
            How `pooler_output` and the classification head summarise the tokens: `"cls"` (the CLS token) or
            `"mean"` (the mean of the patch tokens, MAE's fine-tuning choice).
        image_mean (`list[float]` or `float`, *optional*, defaults to the ImageNet mean):
            Per-channel mean used to normalise images in pretraining; one value per channel, or one float for all
            (stored as a list). Written to `preprocessor_config.json` and used to de-normalise reconstructions.
            Without it, images of other than 3 channels take 0.5.
        image_std (`list[float]` or `float`, *optional*, defaults to the ImageNet standard deviation):
            Per-channel standard deviation, as `image_mean`.
    """

    model_type = "hf_mim_vit"

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        layer_scale_init_value: float = 0.0,
        position_embedding_type: str = "sincos",
        pooling: str = "cls",
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        **kwargs,
    ):
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.layer_scale_init_value = layer_scale_init_value
        self.position_embedding_type = position_embedding_type
        self.pooling = pooling
        self._set_normalization(image_mean, image_std)
        self._validate_encoder()
        super().__init__(**kwargs)

    def _validate_encoder(self) -> None:
        self._validate_image_fields()
        self._require_positive_ints("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if self.hidden_size % self.num_attention_heads:
            raise config_error(
                "hidden_size",
                self.hidden_size,
                f"must be divisible by num_attention_heads={self.num_attention_heads}",
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise config_error(
                "position_embedding_type", self.position_embedding_type, f"one of {POSITION_EMBEDDING_TYPES}"
            )
        if self.position_embedding_type == "sincos" and self.hidden_size % 4:
            raise config_error("hidden_size", self.hidden_size, "must be divisible by 4 for sincos position embeddings")
        if self.pooling not in POOLING_TYPES:
            raise config_error("pooling", self.pooling, f"one of {POOLING_TYPES}")
        if self.hidden_act not in ACT2FN:
            raise config_error("hidden_act", self.hidden_act, "a key of transformers.activations.ACT2FN")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                raise config_error(field, value, "a probability in [0, 1)")
        if not isinstance(self.layer_scale_init_value, (int, float)) or self.layer_scale_init_value < 0:
            raise config_error("layer_scale_init_value", self.layer_scale_init_value, "0 (off) or a positive float")
        if not self.layer_norm_eps > 0:
            raise config_error("layer_norm_eps", self.layer_norm_eps, "a positive float")
        self._check_size()

    def _check_size(self) -> None:
        """Refuse sizes no machine could build (a hand-edited config.json, a typo), before anything is allocated:
        the encoder's parameters and position table, and the tokens of one image, have generous upper bounds."""
        width, depth, mlp = self.hidden_size, self.num_hidden_layers, self.intermediate_size
        parameters = depth * (4 * width * width + 2 * width * mlp) + (1 + self.num_patches) * width
        if parameters > MAX_PARAMETERS:
            raise config_error(
                "hidden_size, num_hidden_layers, intermediate_size or image_size",
                (width, depth, mlp, self.image_size),
                f"an encoder of at most {MAX_PARAMETERS:.0e} parameters (these give {parameters:.1e})",
            )
        if self.num_patches > MAX_TOKENS:
            raise config_error(
                "image_size", self.image_size, f"at most {MAX_TOKENS:,} patches of patch_size={self.patch_size}"
            )


# --------------------------------------------------------------------------------------------------------------
# Position embeddings and patches
# --------------------------------------------------------------------------------------------------------------


def sincos_2d_position_embedding(dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine embeddings, (1 + rows * cols, dim) with a zero row for the CLS token first.

    Laid out as facebookresearch/mae writes it: the first half of the channels encodes the column (x), the second
    the row (y), each as [sin | cos] over dim/4 frequencies. Computed in float64 like the reference, so converted
    and fresh models carry the same float32 values.
    """
    if dim % 4:
        raise ValueError(f"dim={dim} must be divisible by 4 for 2-D sincos embeddings")
    rows, cols = grid_size
    # torch, not numpy: this file is uploaded as remote code, which may import only torch and transformers
    f64 = torch.float64
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=f64) / (dim / 4.0))
    grid_y, grid_x = torch.meshgrid(torch.arange(rows, dtype=f64), torch.arange(cols, dtype=f64), indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    table = torch.cat([encode(grid_x), encode(grid_y)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=f64), table], dim=0)
    return table.float()


def resize_position_embedding(
    pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Bicubically resample the patch part of a (1, 1 + L, D) table to another grid; the CLS row is kept.

    Interpolation runs in float32 (bicubic has no half-precision CPU kernel) and returns the input dtype.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    patch_pos = patch_pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=new_grid, mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


def channel_column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-channel constants (a config's `image_mean`, `image_std`) as a (1, C, 1, 1) tensor on `like`'s device and
    dtype, to (de-)normalise (B, C, H, W) images."""
    return torch.tensor(values, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)


def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch_size**2 * C), each patch flattened as (row, column, channel) like MAE."""
    batch, channels, height, width = pixel_values.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image of {height}x{width} pixels is not divisible into {patch_size}x{patch_size} patches")
    rows, cols = height // patch_size, width // patch_size
    patches = pixel_values.reshape(batch, channels, rows, patch_size, cols, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int], num_channels: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, L, patch_size**2 * C) -> (B, C, rows * patch_size, cols * patch_size)."""
    batch, length, width = patches.shape
    rows, cols = grid_size
    if length != rows * cols or width != patch_size * patch_size * num_channels:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit a {rows}x{cols} grid of "
            f"{patch_size}x{patch_size}x{num_channels} patches"
        )
    images = patches.reshape(batch, rows, cols, patch_size, patch_size, num_channels)
    return images.permute(0, 5, 1, 3, 2, 4).reshape(batch, num_channels, rows * patch_size, cols * patch_size)


# --------------------------------------------------------------------------------------------------------------
# Transformer blocks
# --------------------------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: a strided convolution, (B, C, H, W) -> (B, L, D)."""

    def __init__(self, num_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.proj = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, through `scaled_dot_product_attention` or, with
    `attn_implementation="eager"` or when the weights are asked for, as an explicit softmax."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        config: PretrainedConfig | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # read at call time, as transformers' attention modules do: `model.set_attn_implementation("eager")` then
        # switches every block at once
        self.config = config

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, dim = x.shape  # (B, N, D)
        # (B, N, 3 * D) -> (B, N, 3, heads, head_dim) -> (3, B, heads, N, head_dim)
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        dropout = self.attn_drop if self.training else 0.0
        implementation = getattr(self.config, "_attn_implementation", None) or "sdpa"
        if implementation == "sdpa" and not output_attentions:
            x, weights = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout), None
        else:
            scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, heads, N, N)
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)  # float32 softmax, as transformers'
            x = F.dropout(weights, p=dropout, training=self.training) @ v  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(batch, length, dim)  # (B, N, heads * head_dim)
        return self.proj_drop(self.proj(x)), weights


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = ACT2FN[act]
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, rescaling the survivors."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    """Per-channel gain on a residual branch (CaiT, BEiT); timm's name and layout (`ls1.gamma`)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))); LayerScale only when
    `layer_scale_init_value` > 0.

    A `GradientCheckpointingLayer`, transformers' unit of activation checkpointing: `activation_checkpointing_enable`
    (with its `activation_checkpointing_kwargs` and `every_n_layers`) switches every block of the model, encoder and
    decoder alike, as it switches every `ViTMAELayer` of transformers' ViTMAE."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        act: str = "gelu",
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 0.0,
        config: PretrainedConfig | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop, config=config)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = MLP(dim, mlp_dim, act=act, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        scaled = layer_scale_init_value > 0
        self.ls1 = LayerScale(dim, layer_scale_init_value) if scaled else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale_init_value) if scaled else nn.Identity()

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attn(self.norm1(x), output_attentions)
        x = x + self.drop_path(self.ls1(attended))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x)))), weights


class BlockStack(nn.ModuleList):
    """A sequence of blocks (a `ModuleList`, so keys read `blocks.0.attn.qkv...` as in timm and MAE) run with
    per-block hidden states and attention weights. Activation checkpointing is each block's own (`Block`)."""

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False):
        """(B, N, D) -> (B, N, D), the input and each block's output when `output_hidden_states`, and each block's
        attention weights (B, heads, N, N) when `output_attentions`."""
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        for block in self:
            # positional: a checkpointed block passes its tensor inputs to the checkpoint function as *args
            x, weights = block(x, output_attentions)
            if output_hidden_states:
                hidden_states = hidden_states + (x,)
            if output_attentions:
                attentions = attentions + (weights,)
        return x, hidden_states, attentions


def build_blocks(
    config: MIMConfig,
    dim: int,
    depth: int,
    num_heads: int,
    mlp_dim: int,
    drop_path_rate: float = 0.0,
    layer_scale_init_value: float = 0.0,
) -> BlockStack:
    # on the CPU whatever the default device: under `torch.device("meta")` (accelerate's init_empty_weights,
    # transformers' loading) a meta tensor has no values to read
    rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist() if depth > 1 else [drop_path_rate] * depth
    return BlockStack(
        [
            Block(
                dim,
                num_heads,
                mlp_dim,
                act=config.hidden_act,
                qkv_bias=config.qkv_bias,
                layer_norm_eps=config.layer_norm_eps,
                drop=config.hidden_dropout_prob,
                attn_drop=config.attention_probs_dropout_prob,
                drop_path=rate,
                layer_scale_init_value=layer_scale_init_value,
                config=config,
            )
            for rate in rates
        ]
    )


def init_vit_weights(module: nn.Module, config: MIMConfig, init) -> None:
    """MAE's initialisation for the modules defined here (the encoder's own tokens: `base.ViTEncoder`); `init` is
    `transformers.initialization`.

    Going through `transformers.initialization` (not `torch.nn.init`) matters: from_pretrained builds the model
    on the meta device and calls this only for tensors the checkpoint lacks, skipping those flagged as loaded.
    """
    if isinstance(module, nn.Linear):
        init.xavier_uniform_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        init.ones_(module.weight)
        init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        # MAE initialises the patch projection like a linear layer over the flattened patch. Keyed on the Conv2d,
        # not on PatchEmbed: for non-transformers models, v5 skips modules that own no parameters directly.
        # The flag check is ours because a view does not carry the "already loaded" flag of its base tensor.
        if not getattr(module.weight, "_is_hf_initialized", False):
            init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        if module.bias is not None:
            init.zeros_(module.bias)
    elif isinstance(module, LayerScale):
        init.constant_(module.gamma, module.init_value)


def pool(last_hidden_state: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, 1 + L, D) -> (B, D): the CLS token or the mean of the patch tokens."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        return last_hidden_state[:, 1:].mean(dim=1)
    raise config_error("pooling", pooling, f"one of {POOLING_TYPES}")


__all__ = [
    "MIMConfig",
    "Block",
    "LayerScale",
    "BlockStack",
    "Attention",
    "PatchEmbed",
    "build_blocks",
    "sincos_2d_position_embedding",
    "resize_position_embedding",
    "patchify",
    "channel_column",
    "unpatchify",
    "pool",
    "init_vit_weights",
    "to_2tuple",
]
