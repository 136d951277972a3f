"""Starting a model from a checkpoint someone else trained (`hf-mim pretrain --init-from`, `--model_name_or_path` of
`examples/run_pretraining.py`): continued pretraining, the way most MAE users work.

A source is read with the code `hf-mim convert` uses (`convert.py`), so every kind it knows is a starting point:
an hf_mim model of any method, transformers' `ViTMAEForPreTraining`, `ViTModel`, `ViTForImageClassification` or
`ViTForMaskedImageModeling`, and facebookresearch/mae's `.pth`; as a local folder or file, or a Hub id.

What carries over: the encoder always; the decoder and heads too when the source is a model of the same method.
What the new run changes and the weights survive:

- another image size: a learned position table is resampled bicubically to the new grid (sin-cos ones are
  recomputed for it, exactly);
- another channel count: the patch embedding's input channels are summed (3 to 1: a grey image seen as three equal
  channels gives the same response) or repeated and divided by the new count (1 to 3), and a pixel decoder's output
  channels averaged or repeated.

Anything else (a patch size, a width, a depth) cannot carry the weights and is refused in one line naming both
values.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .convert import (
    _folder_model_type,
    _from_transformers,
    read_official,
    read_transformers_vit,
    resolve_source,
)
from .errors import ConversionError
from .loading import from_safetensors
from .modeling.auto import SPECS_BY_MODEL_TYPE
from .modeling.backbone import resize_position_embedding
from .names import hub_id_of

logger = logging.getLogger("hf_mim.warm_start")

#: The config fields that shape the encoder's weights (or how its features are read): a checkpoint's, whatever the
#: method the run trains.
ENCODER_FIELDS = (
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "layer_scale_init_value",
    "position_embedding_type",
    "image_mean",
    "image_std",
)
# what may differ between the checkpoint's encoder and the run's: adapted, not refused
_ADAPTABLE = ("num_channels", "image_mean", "image_std")


@dataclass
class Checkpoint:
    """A starting point, read into an hf_mim pretraining model.

    Args:
        name: how records name it: the Hub id, or the local folder's or file's name (never a local path).
        hub_id: the Hub id it came from, for a card's `base_model`; None for a local one.
        kind: what it was, in words ("transformers ViTMAEForPreTraining").
        model: an hf_mim pretraining model holding its weights.
        fresh: key prefixes of `model` that the source did not hold (initialised, not loaded).
        dropped: the source's keys that no hf_mim model of that kind holds (a classifier, a pooler).
    """

    name: str
    hub_id: str | None
    kind: str
    model: torch.nn.Module
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def config(self):
        return self.model.config


def read_checkpoint(src: str | os.PathLike) -> Checkpoint:
    """Read `src` (a folder, a file or a Hub id) into a `Checkpoint`. Raises ConversionError (a ValueError) for a
    source that is no ViT checkpoint, FileNotFoundError for a path that does not exist."""
    path = resolve_source(src)
    hub_id = hub_id_of(src)
    name = checkpoint_name(src)
    if path.is_file():
        model, fresh, dropped = read_official(path)
        return Checkpoint(name, hub_id, "facebookresearch/mae state dict", model, fresh, dropped)
    model_type = _folder_model_type(path)
    if model_type == "vit_mae":
        return Checkpoint(name, hub_id, "transformers ViTMAEForPreTraining", _from_transformers(path, {}))
    if model_type == "vit":
        model, fresh, dropped = read_transformers_vit(path)
        return Checkpoint(name, hub_id, f"transformers {_architecture(path) or 'ViT'}", model, fresh, dropped)
    return _read_hf_mim(path, name, hub_id, model_type)


def checkpoint_name(src: str | os.PathLike) -> str:
    """How records and cards name a starting checkpoint: its Hub id, or its local folder's or file's name."""
    return hub_id_of(src) or Path(os.path.abspath(os.path.expanduser(str(src)))).name


def _architecture(path: Path) -> str | None:
    return (json.loads((path / "config.json").read_text()).get("architectures") or [None])[0]


def _read_hf_mim(path: Path, name: str, hub_id: str | None, model_type: str | None) -> Checkpoint:
    spec = SPECS_BY_MODEL_TYPE.get(model_type)
    if spec is None:
        raise ConversionError(
            f"{name} holds a model of type {model_type!r}; allowed: an hf_mim model, transformers' vit_mae or vit, "
            "or a facebookresearch/mae .pth"
        )
    model, info = from_safetensors(spec.pretraining_class, path)
    if not hasattr(model, "vit") or any(k.startswith("vit.") for k in info["missing_keys"]):
        raise ConversionError(f"{name} holds no ViT encoder ({model_type}); allowed: a model of a ViT method")
    fresh = sorted({_prefix(k) for k in info["missing_keys"]})
    kind = f"hf_mim {spec.card.display_name} ({_architecture(path) or spec.pretraining_class.__name__})"
    return Checkpoint(name, hub_id, kind, model, fresh, sorted(info["unexpected_keys"]))


def _prefix(key: str) -> str:
    return key.split(".")[0] + ("." if "." in key else "")


def checkpoint_config_fields(checkpoint: Checkpoint, config_class, known_fields: set[str]) -> tuple[dict, bool]:
    """(fields of the run's config that come from the checkpoint, whether it is of the run's own method). Of the same
    method: each of `known_fields` (the config class's own) it holds, so its decoder and heads carry over too; of
    another: the encoder's."""
    config = checkpoint.config
    same_method = config.model_type == config_class.model_type
    names = known_fields if same_method else ENCODER_FIELDS
    source = config.to_dict()
    return {k: source[k] for k in names if k in source}, same_method


def check_compatible(checkpoint: Checkpoint, config) -> None:
    """Refuse, in one line naming both values, a run config whose encoder the checkpoint's weights cannot fill."""
    theirs = checkpoint.config
    for name in ENCODER_FIELDS:
        if name in _ADAPTABLE or not hasattr(theirs, name):
            continue
        mine, source = getattr(config, name), getattr(theirs, name)
        if mine != source:
            flag = {"patch_size": "--patch-size"}.get(name, name)
            raise ValueError(
                f"{flag}={mine!r} is invalid with --init-from {checkpoint.name}, whose {name} is {source!r}: its "
                "weights cannot be carried to another value; leave it out to take the checkpoint's"
            )


def load_initial_weights(model: torch.nn.Module, checkpoint: Checkpoint) -> list[str]:
    """Copy `checkpoint`'s weights into `model` (an hf_mim pretraining model built for the run), adapting the
    position tables and the channels; returns one line each for what was loaded, adapted, left fresh and dropped."""
    check_compatible(checkpoint, model.config)
    same_method = checkpoint.config.model_type == model.config.model_type
    theirs = {k: v for k, v in checkpoint.model.state_dict().items() if not k.startswith(tuple(checkpoint.fresh))}
    mine = model.state_dict()
    lines, loaded, dropped = [], {}, list(checkpoint.dropped)
    source_grid, grid = tuple(checkpoint.config.grid_size), tuple(model.config.grid_size)
    channels = (checkpoint.config.num_channels, model.config.num_channels)
    learned = {name for name, _ in model.named_parameters()}
    for key, value in theirs.items():
        if not same_method and not key.startswith("vit."):
            dropped.append(key)
            continue
        if key not in mine:
            dropped.append(key)
            continue
        target = mine[key]
        if key.endswith("pos_embed") and value.shape != target.shape:
            if key not in learned:
                continue  # a fixed sin-cos table: the model's own, computed for its grid, is the exact one
            value = resize_position_embedding(value, source_grid, grid)
        elif channels[0] != channels[1] and value.shape != target.shape:
            value = _adapt_channels(key, value, target, channels, model.config.patch_size)
        if value.shape != target.shape:
            raise ValueError(
                f"--init-from {checkpoint.name}: {key} is {tuple(value.shape)} there and {tuple(target.shape)} in this "
                "run's model; the weights cannot be carried over"
            )
        loaded[key] = value.to(target.dtype)
    result = model.load_state_dict(loaded, strict=False)
    parts = sorted({k.split(".")[0] for k in loaded})
    lines.append(f"init from {checkpoint.name} ({checkpoint.kind}): loaded {len(loaded)} tensors ({', '.join(parts)})")
    if source_grid != grid:
        how = "resampled bicubically" if "vit.pos_embed" in learned else "recomputed (sin-cos)"
        lines.append(
            f"position embeddings: {how} from the {source_grid[0]}x{source_grid[1]} grid of "
            f"{_size(checkpoint.config.image_size)} px to the {grid[0]}x{grid[1]} grid of "
            f"{_size(model.config.image_size)} px"
        )
    if channels[0] != channels[1]:
        how = "summed" if channels[1] < channels[0] else f"repeated and divided by {channels[1]}"
        lines.append(f"patch embedding: {channels[0]} input channels {how} to {channels[1]}")
    fresh = _grouped([k for k in result.missing_keys if k in mine and not _fixed(model, k)])
    lines.append(f"starts fresh: {fresh}" if fresh else "starts fresh: nothing")
    shown = _grouped(dropped)
    lines.append(f"dropped: {shown}" if shown else "dropped: nothing")
    return lines


def _adapt_channels(key, value, target, channels, patch_size) -> torch.Tensor:
    """The patch embedding's input channels, or a pixel head's output channels, from one count to the other."""
    old, new = channels
    if key.endswith("patch_embed.proj.weight") and value.ndim == 4 and value.shape[1] == old:
        if new < old:
            summed = value.sum(dim=1, keepdim=True)
            return summed.expand(-1, new, -1, -1).clone() if new > 1 else summed
        return value.repeat(1, new // old + 1, 1, 1)[:, :new] * (old / new)
    pixels = patch_size * patch_size
    if value.shape[0] == pixels * old and target.shape[0] == pixels * new:
        # a pixel decoder's output, laid out (patch row, patch column, channel) as patchify writes it
        per_channel = value.reshape(pixels, old, *value.shape[1:])
        if new < old:
            adapted = per_channel.mean(dim=1, keepdim=True).expand(pixels, new, *value.shape[1:])
        else:
            adapted = per_channel.repeat(1, new // old + 1, *([1] * (value.ndim - 1)))[:, :new]
        return adapted.reshape(pixels * new, *value.shape[1:]).clone()
    return value


def _fixed(model, key: str) -> bool:
    """A buffer the model computes itself (a sin-cos table): never "fresh"."""
    return key.endswith("pos_embed") and key not in dict(model.named_parameters())


def _grouped(keys: list[str]) -> str:
    """Keys counted by their first two name parts: "decoder (18 tensors), mask_token (1 tensor)"."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        group = parts[0] if len(parts) < 3 or parts[1].isdigit() else ".".join(parts[:2])
        counts[group] = counts.get(group, 0) + 1
    return ", ".join(f"{g} ({n} tensor{'s' if n > 1 else ''})" for g, n in sorted(counts.items()))


def _size(value) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, (list, tuple)) else str(value)


__all__ = [
    "Checkpoint",
    "ENCODER_FIELDS",
    "check_compatible",
    "checkpoint_config_fields",
    "checkpoint_name",
    "load_initial_weights",
    "read_checkpoint",
]
