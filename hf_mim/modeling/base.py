"""The `PreTrainedModel` base every hf_mim model derives from, and the shared downstream encoder."""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import sys

import torch
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .backbone import MIMConfig, ViTEncoder, init_vit_weights, pool, to_2tuple
from .heads import init_head_weights
from .masking import sample_mask
from .spec import draw_inputs

PREPROCESSOR_CONFIG = "preprocessor_config.json"

logger = logging.getLogger(__name__)

#: Filled in by hf_mim.hub when hf_mim itself is imported: "save" writes the model card next to saved weights and
#: "push" uploads through hf_mim's checked path. In the uploaded copy of this file nothing fills it, and
#: transformers' own `push_to_hub` applies.
HUB_HOOKS: dict = {}


def export_remote_code(config, save_directory: str | os.PathLike) -> list[str]:
    """Copy the modeling files a config's method needs into `save_directory`, flat, and set `config.auto_map`.

    The files are the method file (whose `METHOD.auto_classes` names the Auto class of each model class) and every
    file it imports relatively, recursively; they import only torch, transformers and the standard library; their
    `from .x import y` imports resolve in the flat upload as they do in the package. Works from the installed
    package and from a remote-code copy alike, so a model loaded without hf_mim saves and re-shares the same way.
    Returns the copied file names (empty, with a warning, for a config class whose module declares no `METHOD`).
    """
    from transformers.dynamic_module_utils import get_relative_import_files

    method = getattr(sys.modules[type(config).__module__], "METHOD", None)
    auto_classes = getattr(method, "auto_classes", None)
    if not auto_classes:
        logger.warning(
            "%s has no METHOD in its module: saved without remote code, so loading it needs hf_mim",
            type(config).__name__,
        )
        return []
    files, auto_map = set(), {}
    for auto_name, cls in auto_classes.items():
        source = inspect.getfile(cls)
        auto_map[auto_name] = f"{os.path.splitext(os.path.basename(source))[0]}.{cls.__name__}"
        files.add(source)
        files.update(get_relative_import_files(source))
    config.auto_map = auto_map
    os.makedirs(save_directory, exist_ok=True)
    names = []
    for source in sorted(files):
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


class MIMPreTrainedModel(PreTrainedModel):
    """Weight initialisation, gradient checkpointing and saving conventions shared by all hf_mim models.

    The encoder always lives under `vit.`, in every model class, so any checkpoint's encoder loads into any other
    class of the same method (pretraining -> AutoModel -> classification) without prefix juggling.
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
    ):
        """SimMIM / BEiT style encoding: every patch is seen, masked ones as `self.mask_token`. Without
        `bool_masked_pos`, masks are drawn from the config's strategy. Returns (last_hidden_state (B, 1 + L, D),
        hidden states or None, bool_masked_pos (B, L), grid (rows, cols))."""
        grid = self.vit.input_grid(pixel_values, interpolate_pos_encoding)
        if bool_masked_pos is None:  # drawn per image, as the data pipeline draws it
            drawn = draw_inputs(sample_mask, self.config, grid, pixel_values.shape[0], pixel_values.device)
            bool_masked_pos = drawn["bool_masked_pos"]
        hidden, hidden_states, _ = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            bool_masked_pos=bool_masked_pos,
            mask_token=self.mask_token,
        )
        return hidden, hidden_states, bool_masked_pos, grid

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (timm convention): tokens, position tables,
        and every bias and norm weight (all tensors of fewer than two dimensions)."""
        return {
            name
            for name, param in self.named_parameters()
            if param.ndim < 2 or name.endswith(("cls_token", "mask_token", "pos_embed"))
        }


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
        self.vit = ViTEncoder(config)
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
    "MIMPreTrainedModel",
    "MIMModel",
    "build_image_processor",
    "export_remote_code",
    "HUB_HOOKS",
    "PREPROCESSOR_CONFIG",
]
