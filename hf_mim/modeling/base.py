"""The `PreTrainedModel` base every hf_mim model derives from, the shared ViT encoder (the base model every hf_mim
class holds), and the downstream encoder model."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import sys
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .backbone import (
    MIMConfig,
    PatchEmbed,
    build_blocks,
    init_vit_weights,
    pool,
    resize_position_embedding,
    sincos_2d_position_embedding,
    to_2tuple,
)
from .heads import init_head_weights
from .masking import sample_mask
from .spec import draw_inputs

PREPROCESSOR_CONFIG = "preprocessor_config.json"

logger = logging.getLogger(__name__)

#: Filled in by hf_mim.hub when hf_mim itself is imported: "save" writes the model card next to saved weights and
#: "push" uploads through hf_mim's checked path. In the uploaded copy of this file nothing fills it, and
#: transformers' own `push_to_hub` applies.
HUB_HOOKS: dict = {}


def remote_code_sources(config_class) -> tuple[list[str], dict[str, str]]:
    """(source files, auto_map) of the modeling code a config class's method needs for `trust_remote_code`
    loading: the method file (whose `METHOD.auto_classes` names the Auto class of each model class) and every file
    it imports relatively, recursively. Empty for a config class whose module declares no `METHOD`."""
    from transformers.dynamic_module_utils import get_relative_import_files

    method = getattr(sys.modules[config_class.__module__], "METHOD", None)
    auto_classes = getattr(method, "auto_classes", None)
    if not auto_classes:
        return [], {}
    files, auto_map = set(), {}
    for auto_name, cls in auto_classes.items():
        source = inspect.getfile(cls)
        auto_map[auto_name] = f"{os.path.splitext(os.path.basename(source))[0]}.{cls.__name__}"
        files.add(source)
        files.update(get_relative_import_files(source))
    return sorted(files), auto_map


def export_remote_code(config, save_directory: str | os.PathLike) -> list[str]:
    """Copy the modeling files a config's method needs (`remote_code_sources`) into `save_directory`, flat, and set
    `config.auto_map`.

    The files import only torch, transformers and the standard library; their `from .x import y` imports resolve
    in the flat upload as they do in the package. Works from the installed package and from a remote-code copy
    alike, so a model loaded without hf_mim saves and re-shares the same way. Returns the copied file names (empty,
    with a warning, for a config class whose module declares no `METHOD`).
    """
    files, auto_map = remote_code_sources(type(config))
    if not files:
        logger.warning(
            "%s has no METHOD in its module: saved without remote code, so loading it needs hf_mim",
            type(config).__name__,
        )
        return []
    config.auto_map = auto_map
    os.makedirs(save_directory, exist_ok=True)
    names = []
    for source in files:
        name = os.path.basename(source)
        shutil.copyfile(source, os.path.join(save_directory, name))
        names.append(name)
    return names


def build_image_processor(config: MIMConfig):
    """The transformers image processor matching a config: resize to `image_size`, scale to [0, 1], normalise
    with the pretraining `image_mean` / `image_std`. Saved as preprocessor_config.json, it loads with
    `AutoImageProcessor` without hf_mim (it is transformers' own ViT processor, PIL backend)."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    height, width = to_2tuple(config.image_size)
    return ViTImageProcessorPil(
        size={"height": height, "width": width},
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


class MaskTokenEncoding(NamedTuple):
    """What `encode_with_mask_tokens` returns: `last_hidden_state` (B, 1 + L, D); `hidden_states` and `attentions`
    when asked for (else None); the `bool_masked_pos` (B, L) used; the patch `grid` (rows, cols)."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    bool_masked_pos: torch.Tensor
    grid: tuple[int, int]


class MIMPreTrainedModel(PreTrainedModel):
    """Weight initialisation, gradient checkpointing and saving conventions shared by all hf_mim models.

    The encoder always lives under `vit.`, in every model class, so any checkpoint's encoder loads into any other
    class of the same method (pretraining -> AutoModel -> classification) without prefix juggling.

    Where hf_mim differs from transformers' ViT and ViTMAE on purpose (`tests/test_transformers_common.py` checks
    each of these):

    - Linear layers and the patch projection are Xavier-uniform with zero biases, as facebookresearch/mae's
      `_init_weights` draws them, where transformers' ViT draws normal(0, `initializer_range`) (its ViTMAE makes the
      patch projection alone Xavier). `initializer_range` sets the CLS and mask tokens and learned position tables.
    - The fine-tuning head of `MIMForImageClassification` is trunc_normal(std 2e-5), MAE's, so that a new head
      barely moves the pretrained features at first.
    - The visual tokenizer's convolutions keep PyTorch's default (Kaiming-uniform), as convolutional autoencoders do.
    - Fixed sin-cos position tables are persistent buffers (saved, never trained), not frozen parameters.
    - `layer_norm_eps` defaults to MAE's 1e-6, not ViTMAE's 1e-12.
    """

    config_class = MIMConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _can_compile_fullgraph = True
    _no_split_modules = ["Block"]

    @torch.no_grad()
    def _init_weights(self, module):
        init_vit_weights(module, self.config, init)
        init_head_weights(module, self.config, init)
        if isinstance(module, ViTEncoder):
            config = self.config
            init.normal_(module.cls_token, std=config.initializer_range)
            if config.position_embedding_type == "learned":
                init.trunc_normal_(module.pos_embed, std=config.initializer_range)
            else:
                init.copy_(module.pos_embed, sincos_2d_position_embedding(config.hidden_size, config.grid_size)[None])

    def _output_flags(self, output_hidden_states: bool | None, return_dict: bool | None) -> tuple[bool, bool]:
        """Per-call flags, falling back to the config's, as transformers models do."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return bool(output_hidden_states), self.config.return_dict if return_dict is None else return_dict

    def _attention_flag(self, output_attentions: bool | None) -> bool:
        return bool(self.config.output_attentions if output_attentions is None else output_attentions)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """What the model does after optimizer step `step` of `total_steps` (`hf-mim pretrain` calls it; under
        `Trainer`, `EMATeacherCallback` does): an EMA teacher, where the model has one, takes its step."""
        if hasattr(self, "teacher"):
            self.teacher.total_steps = total_steps
            self.update_teacher()

    def get_input_embeddings(self):
        return self.vit.patch_embed

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` (safetensors), plus what sharing needs: the modeling code and an
        `auto_map` in config.json (`trust_remote_code=True` loading without hf_mim), preprocessor_config.json when
        the folder has none yet (`AutoImageProcessor`, `pipeline`), and, with hf_mim installed, README.md: the model
        card, built from this model and the run records found in the folder."""
        main = kwargs.get("is_main_process", True)
        if main:
            # auto_map must be set before config.json is written; the files are copied now for the same reason
            export_remote_code(self.config, save_directory)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if main:
            if not os.path.exists(os.path.join(save_directory, PREPROCESSOR_CONFIG)):
                build_image_processor(self.config).save_pretrained(save_directory)
            if "save" in HUB_HOOKS:
                HUB_HOOKS["save"](self, save_directory)
        return result

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload this model to the Hub. With hf_mim installed: `hf_mim.hub.push_model` (checked repo id, generated
        and validated model card, safetensors and remote code only); otherwise transformers' `push_to_hub`."""
        if "push" in HUB_HOOKS:
            return HUB_HOOKS["push"](self, repo_id, **kwargs)
        return super().push_to_hub(repo_id, **kwargs)

    def encode_with_mask_tokens(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool | None = None,
    ) -> MaskTokenEncoding:
        """SimMIM / BEiT style encoding: every patch is seen, masked ones as `self.mask_token`. Without
        `bool_masked_pos`, masks are drawn from the config's strategy; without `output_attentions`, the config
        says."""
        grid = self.vit.input_grid(pixel_values, interpolate_pos_encoding)
        if bool_masked_pos is None:  # drawn per image, as the data pipeline draws it
            drawn = draw_inputs(sample_mask, self.config, grid, pixel_values.shape[0], pixel_values.device)
            bool_masked_pos = drawn["bool_masked_pos"]
        hidden, hidden_states, attentions = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            bool_masked_pos=bool_masked_pos,
            mask_token=self.mask_token,
            output_attentions=self._attention_flag(output_attentions),
        )
        return MaskTokenEncoding(hidden, hidden_states, attentions, bool_masked_pos, grid)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (timm convention): tokens, position tables,
        and every bias and norm weight (all tensors of fewer than two dimensions)."""
        return {
            name
            for name, param in self.named_parameters()
            if param.ndim < 2 or name.endswith(("cls_token", "mask_token", "pos_embed"))
        }


class EncoderOutput(NamedTuple):
    """What the encoder returns: `last_hidden_state` (B, N, D) after the final norm; `hidden_states`, the input
    then each block's output, when asked for; `attentions`, each block's (B, heads, N, N) weights, when asked for."""

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class ViTEncoder(MIMPreTrainedModel):
    """The shared ViT: patch embedding, CLS token, position embeddings, pre-norm blocks, final LayerNorm.

    It is transformers' *base model* of every hf_mim class: each holds it under `base_model_prefix` (`vit`), so
    `model.base_model` is this `PreTrainedModel`, and `model.base_model.save_pretrained(folder)` writes the encoder
    alone (keys without the `vit.` prefix, which loading into any class of the method adds back, reporting the
    class's own parts as missing). A model that holds it builds it with `ViTEncoder.part_of(config)`.

    Three stages, usable separately by methods that need to act between them:

    - `embed(pixel_values)`: patch tokens with their position embeddings (B, L, D), and the CLS token (B, 1, D);
      given `bool_masked_pos` and a `mask_token`, masked patches' embeddings are replaced by the mask token
      before the position embeddings are added (SimMIM, BEiT);
    - a method may drop tokens (MAE) here;
    - `forward_tokens(tokens)`: the blocks and the final norm on whatever sequence it is given.

    `forward` composes them, optionally keeping only the patches `ids_keep` (B, K).
    """

    def __init__(self, config: MIMConfig, initialize: bool = True):
        super().__init__(config)
        self.patch_size = config.patch_size
        self.grid_size = config.grid_size
        self.patch_embed = PatchEmbed(config.num_channels, config.hidden_size, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        if config.position_embedding_type == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, config.hidden_size))
        else:
            # A persistent buffer: saved with the weights, so a checkpoint reloads exactly what it was trained
            # with, yet never seen by optimizers, weight decay or DDP's gradient buckets. Its values are set here
            # (as transformers sets a buffer's) and again by _init_weights for a model built on the meta device.
            table = sincos_2d_position_embedding(config.hidden_size, config.grid_size)[None]
            # in the default dtype, as a factory function would make it (from_pretrained(dtype=...) sets it)
            self.register_buffer("pos_embed", table.to(torch.get_default_dtype()), persistent=True)
        self.blocks = build_blocks(
            config,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
            config.intermediate_size,
            config.drop_path_rate,
            config.layer_scale_init_value,
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self._initialize = initialize
        self.post_init()
        self._initialize = True  # from_pretrained initialises the weights a checkpoint lacks through init_weights

    @classmethod
    def part_of(cls, config: MIMConfig) -> ViTEncoder:
        """The encoder of a model that holds it. Its weights are initialised by the holder's `post_init`, in the
        order a plain submodule's are: a seed gives the same weights as when the encoder was not a `PreTrainedModel`,
        and no weight is drawn twice."""
        return cls(config, initialize=False)

    def init_weights(self):
        if self._initialize:
            super().init_weights()

    def get_input_embeddings(self):
        return self.patch_embed

    def input_grid(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> tuple[int, int]:
        """Validate `pixel_values` and return its patch grid (rows, cols)."""
        expected_c = self.config.num_channels
        expected_h, expected_w = to_2tuple(self.config.image_size)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != expected_c:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected_c}, height, width), got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        if interpolate_pos_encoding:
            if height % self.patch_size or width % self.patch_size:
                raise ValueError(
                    f"pixel_values of {height}x{width} pixels cannot be cut into {self.patch_size}x{self.patch_size} "
                    "patches: both sides must be multiples of patch_size"
                )
        elif (height, width) != (expected_h, expected_w):
            raise ValueError(
                f"pixel_values have size {height}x{width} but the model expects {expected_h}x{expected_w}; "
                "resize the images or pass interpolate_pos_encoding=True"
            )
        return height // self.patch_size, width // self.patch_size

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        return resize_position_embedding(self.pos_embed, self.grid_size, grid)

    def embed(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with position embeddings (B, L, D) and the CLS token with its own (B, 1, D). Where
        `bool_masked_pos` (B, L) is True the patch embedding is replaced by `mask_token` (1, 1, D) first."""
        grid = self.input_grid(pixel_values, interpolate_pos_encoding)
        pos = self.position_embedding(grid)
        tokens = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        if bool_masked_pos is not None:
            if mask_token is None:
                raise ValueError("bool_masked_pos needs a mask_token to put in place of the masked patches")
            if tuple(bool_masked_pos.shape) != tuple(tokens.shape[:2]):
                raise ValueError(
                    f"bool_masked_pos must have shape (batch, num_patches) = {tuple(tokens.shape[:2])}, "
                    f"got {tuple(bool_masked_pos.shape)}"
                )
            tokens = torch.where(bool_masked_pos.bool().unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        tokens = tokens + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        return tokens, cls

    def forward_tokens(
        self, x: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False
    ) -> EncoderOutput:
        """Blocks then final norm on a (B, N, D) sequence."""
        x, hidden_states, attentions = self.blocks(x, output_hidden_states, output_attentions)
        return EncoderOutput(self.norm(x), hidden_states, attentions)

    def forward(
        self,
        pixel_values: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Encode all patches, or only `ids_keep` (B, K), masked ones replaced by `mask_token` where
        `bool_masked_pos`. `last_hidden_state` is (B, 1 + K, D), after the final norm."""
        tokens, cls = self.embed(pixel_values, interpolate_pos_encoding, bool_masked_pos, mask_token)  # (B, L, D)
        if ids_keep is not None:  # (B, L, D) -> (B, K, D): the kept patches, in ids_keep's order
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.forward_tokens(torch.cat([cls, tokens], dim=1), output_hidden_states, output_attentions)


class MIMModel(MIMPreTrainedModel):
    """The pretrained encoder for downstream use: every patch is seen, nothing is masked, so the output is
    deterministic in eval mode. `AutoModel.from_pretrained` on any hf_mim checkpoint returns this class.

    Returns `BaseModelOutputWithPooling`: `last_hidden_state` (B, 1 + L, D) with the CLS token first, after the final
    LayerNorm; `pooler_output` (B, D) by `config.pooling`; `hidden_states` when asked for.
    """

    # Loading from a pretraining checkpoint leaves its decoder / heads unused, by design.
    _keys_to_ignore_on_load_unexpected = [r"^(?!vit\.)"]

    def __init__(self, config: MIMConfig):
        super().__init__(config)
        self.vit = ViTEncoder.part_of(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        last_hidden_state, hidden_states, attentions = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=self._attention_flag(output_attentions),
        )
        pooled = pool(last_hidden_state, self.config.pooling)
        output = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "EncoderOutput",
    "MaskTokenEncoding",
    "MIMPreTrainedModel",
    "MIMModel",
    "ViTEncoder",
    "build_image_processor",
    "export_remote_code",
    "remote_code_sources",
    "HUB_HOOKS",
    "PREPROCESSOR_CONFIG",
]
