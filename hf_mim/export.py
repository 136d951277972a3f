"""`hf-mim export SRC DST --format transformers`: an hf_mim model as transformers' own classes, for people who have
transformers and not hf_mim, or may not run remote code.

- The encoder of any method whose encoder is a plain ViT (MAE, SimMIM, MaskFeat, R-MAE, C-MAE, ADIOS) becomes a
  `ViTModel`, with its image processor. Its pooler is set to the identity on the CLS token (`pooler_act: linear`),
  so `pooler_output` is the CLS feature hf_mim's `pooling="cls"` gives, not a random projection.
- MAE with its decoder becomes a `ViTMAEForPreTraining`: the same loss, logits and mask for the same noise.

The weights are renamed and the fused qkv projection split, the reverse of `convert.py`'s mapping; nothing is
retrained. A model transformers' ViT cannot hold (LayerScale, relative position bias, a visual tokenizer) is
refused in one line naming the reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTModel

from .convert import (
    _TRANSFORMERS_BLOCK,
    _TRANSFORMERS_RENAMES,
    _transformers_encoder_fields,
    check_destination,
    mae_decoder_fields,
)
from .errors import ConversionError
from .modeling.base import build_image_processor
from .warm_start import read_checkpoint

FORMATS = ("transformers",)
# hf_mim's names -> transformers' (v5 in-memory names; transformers writes and reads its own file layout)
_TO_TRANSFORMERS = {
    new: old for old, new in _TRANSFORMERS_RENAMES.items() if not old.startswith(("vit.embeddings.mask", "decoder.0"))
}
_BLOCK_TO_TRANSFORMERS = {new: old for old, new in _TRANSFORMERS_BLOCK.items()}
_BLOCK = re.compile(r"^(vit|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass
class ExportArguments:
    """What `hf-mim export` takes."""

    src: str = field(metadata={"help": "an hf_mim model: a folder or a Hub id", "positional": True})
    dst: str = field(metadata={"help": "output folder (a new or empty one)", "positional": True})
    format: str = field(
        default="transformers",
        metadata={
            "help": "transformers: ViTMAEForPreTraining for an MAE with its decoder, else the encoder as ViTModel; "
            "both load with transformers alone, without remote code (default: %(default)s)",
            "choices": list(FORMATS),
        },
    )


def export_model(src: str | os.PathLike, dst: str | os.PathLike, format: str = "transformers") -> list[str]:
    """Write `src` (an hf_mim model) into `dst` as transformers' classes; returns one line each for what was
    written and what did not carry over. Raises ConversionError for a model transformers' ViT cannot hold."""
    if format not in FORMATS:
        raise ValueError(f"--format={format!r} is invalid: allowed {list(FORMATS)}")
    check_destination(Path(os.path.expanduser(str(src))), dst)
    model, lines = to_transformers(src)
    model.save_pretrained(dst)
    build_image_processor(model.hf_mim_config).save_pretrained(dst)
    return [f"wrote {type(model).__name__} to {dst}: loads with transformers alone", *lines]


def to_transformers(src: str | os.PathLike):
    """(transformers model holding `src`'s weights, notes): `ViTMAEForPreTraining` for an MAE with its decoder,
    else `ViTModel`. The model carries the hf_mim config it came from as `hf_mim_config` (for its processor)."""
    checkpoint = read_checkpoint(src)
    if not checkpoint.kind.startswith("hf_mim"):
        raise ConversionError(f"{checkpoint.name} is a {checkpoint.kind} already; export takes hf_mim models")
    config = checkpoint.config
    _check_plain_vit(checkpoint.name, config)
    state = {k: v for k, v in checkpoint.model.state_dict().items() if not k.startswith(tuple(checkpoint.fresh))}
    encoder = _transformers_encoder_fields(config)
    notes = []
    with_decoder = config.model_type == "hf_mim_mae" and "decoder." not in checkpoint.fresh
    if with_decoder:
        target = ViTMAEForPreTraining(ViTMAEConfig(**encoder, **mae_decoder_fields(config)))
        if config.mask_strategy != "random":
            notes.append(
                f"masking: transformers' ViTMAE masks at random; this model was trained with {config.mask_strategy}"
            )
        kept = ("vit.", "decoder.")
    else:
        target = ViTModel(
            ViTConfig(**encoder, encoder_stride=config.patch_size, pooler_output_size=config.hidden_size,
                      pooler_act="linear"),
        )  # fmt: skip
        kept = ("vit.",)
    left = sorted({k.split(".")[0] for k in state if not k.startswith(kept)})
    if left:
        notes.append(f"not exported (not part of {type(target).__name__}): {', '.join(left)}")
    if config.pooling != "cls" and not with_decoder:
        notes.append(
            f"pooling: this model pools by {config.pooling}; ViTModel's pooler_output is the CLS token, so take "
            "last_hidden_state[:, 1:].mean(1) for its features"
        )
    mapped = _to_transformers_names({k: v for k, v in state.items() if k.startswith(kept)})
    if not with_decoder:
        mapped = {k.removeprefix("vit."): v for k, v in mapped.items()}
        dim = config.hidden_size
        mapped["pooler.dense.weight"] = torch.eye(dim)
        mapped["pooler.dense.bias"] = torch.zeros(dim)
    result = target.load_state_dict(mapped, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(
            f"{checkpoint.name} does not fit {type(target).__name__}: missing {result.missing_keys[:4]}, not placed "
            f"{result.unexpected_keys[:4]}"
        )
    target.hf_mim_config = config
    return target.eval(), notes


def _check_plain_vit(name: str, config) -> None:
    if not hasattr(config, "hidden_size") or config.model_type == "hf_mim_visual_tokenizer":
        raise ConversionError(f"{name} ({config.model_type}) has no ViT encoder: nothing transformers' ViT can hold")
    if getattr(config, "layer_scale_init_value", 0):
        raise ConversionError(
            f"{name} uses LayerScale (layer_scale_init_value={config.layer_scale_init_value}), which transformers' "
            "ViTModel has not; load it with hf_mim, or with trust_remote_code=True"
        )


def _to_transformers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, unknown = {}, []
    for key, value in state.items():
        if key in _TO_TRANSFORMERS:
            out[_TO_TRANSFORMERS[key]] = value
            continue
        match = _BLOCK.match(key)
        if not match:
            unknown.append(key)
            continue
        side, index, part, kind = match.groups()
        prefix = f"vit.layers.{index}." if side == "vit" else f"decoder.decoder_layers.{index}."
        if part == "attn.qkv":
            for letter, piece in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.{letter}_proj.{kind}"] = piece.clone()
        elif part in _BLOCK_TO_TRANSFORMERS:
            out[f"{prefix}{_BLOCK_TO_TRANSFORMERS[part]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f"weights transformers' ViT has no place for: {sorted(unknown)[:6]}")
    return out


__all__ = ["ExportArguments", "export_model", "to_transformers"]
