"""Convert existing MAE and SimMIM checkpoints into hf_mim ones.

Three sources (`convert_checkpoint` tells them apart):

- a transformers `ViTForMaskedImageModeling` folder (`model_type: vit`), which becomes `SimMIMForPreTraining`; a
  plain `ViTModel` folder converts too, with a fresh mask token and head and a warning;
- a transformers `ViTMAEForPreTraining` folder (config.json with `model_type: vit_mae`, such as a local copy of
  facebook/vit-mae-base). It is read through transformers itself, which knows every key layout it ever wrote;
- a facebookresearch/mae state dict (`.pth`, read with `torch.load(weights_only=True)`, or `.safetensors`),
  full pretraining checkpoints or encoder-only ones. Encoder-only ones get a freshly initialised decoder, with a
  warning. The configuration is read off the tensor shapes; the number of attention heads, which shapes do not
  show, follows the ViT presets unless given.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle  # for its error type only: official checkpoints are read with weights_only=True
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import ViTForMaskedImageModeling, ViTMAEForPreTraining

from .errors import ConversionError
from .loading import from_safetensors, load_checked
from .modeling.mae import MAEConfig, MAEForPreTraining
from .modeling.simmim import SimMIMConfig, SimMIMForPreTraining
from .names import check_repo_id, looks_like_path

# Heads of the standard ViT widths (Ti, S, B, L, H); MAE's decoders use 16 heads.
_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_OFFICIAL_DECODER_HEADS = 16


@dataclass
class ConvertArguments:
    """What `hf-mim convert` takes; the CLI is generated from these fields, their defaults and their help. The
    optional fields are config values to record where the source cannot tell them."""

    src: str = field(
        metadata={"help": "transformers checkpoint folder, or official .pth / .safetensors file", "positional": True}
    )
    dst: str = field(
        metadata={"help": "output folder (safetensors, config.json, preprocessor_config.json)", "positional": True}
    )
    num_attention_heads: int | None = field(
        default=None, metadata={"help": "encoder heads, when the weights cannot tell (official files)"}
    )
    decoder_num_attention_heads: int | None = field(
        default=None, metadata={"help": "decoder heads (official files; default 16)"}
    )
    norm_pix_loss: bool | None = field(
        default=None, metadata={"help": "true/false: the target the checkpoint was trained with"}
    )
    mask_ratio: float | None = field(default=None, metadata={"help": "mask ratio to record in the config"})
    mask_patch_size: int | None = field(default=None, metadata={"help": "SimMIM: mask patch size in pixels to record"})

    def config_overrides(self) -> dict:
        fields = (
            "num_attention_heads",
            "decoder_num_attention_heads",
            "norm_pix_loss",
            "mask_ratio",
            "mask_patch_size",
        )
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None}


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None, **config_overrides):
    """Convert `src` (a local folder or file, or a Hub model id) into the matching hf_mim model (saved to `dst` when
    given): a transformers ViT folder gives `SimMIMForPreTraining`, a ViTMAE folder or an official MAE file gives
    `MAEForPreTraining`."""
    src = resolve_source(src)
    if dst is not None:
        check_destination(src, dst)
    if src.is_dir() and _folder_model_type(src) == "vit":
        return convert_simmim_checkpoint(src, dst, **config_overrides)
    return convert_mae_checkpoint(src, dst, **config_overrides)


# What a checkpoint source may bring down from the Hub: configs, safetensors and official state dicts (read with
# weights_only=True). Never a pickle that transformers would unpickle, never code.
SOURCE_PATTERNS = ("*.json", "*.safetensors", "*.pth")


def resolve_source(src: str | os.PathLike) -> Path:
    """`src` as a local path: a folder or file as it is, else a Hub model id, downloaded (its config, safetensors and
    .pth files only) into the Hub cache. A Hub repository without config.json must hold exactly one weights file,
    which is then the source."""
    path = Path(os.path.expanduser(str(src)))
    if path.exists():
        return path
    text = str(src)
    if looks_like_path(text):
        raise FileNotFoundError(f"no checkpoint at {src}")
    try:
        repo_id = check_repo_id(text, "checkpoint")
    except ValueError:
        raise FileNotFoundError(f"no checkpoint at {src}: neither a local path nor a Hub model id") from None

    folder = Path(snapshot_download(repo_id, allow_patterns=list(SOURCE_PATTERNS)))
    if (folder / "config.json").is_file():
        return folder
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.pth"))
    if len(weights) != 1:
        raise ConversionError(
            f"the Hub repository {repo_id} has no config.json and {len(weights)} weight files "
            f"({', '.join(w.name for w in weights[:4]) or 'none'}); allowed: a model folder, or one .pth/.safetensors"
        )
    return weights[0]


# What saving a converted model writes into `dst` (beside the modeling files, named *.py).
_WRITTEN = ("config.json", "model.safetensors", "model.safetensors.index.json", "preprocessor_config.json", "README.md")


def check_destination(src: Path, dst: str | os.PathLike) -> None:
    """Refuse a `dst` whose files would overwrite the source (the same folder, or a folder holding the source file
    under a name the save writes) or another model (a folder holding any file the save writes). Raises
    ConversionError before anything is read or written."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if src.is_dir():
        clash = dst == src
    else:
        clash = src.parent == dst and (src.name in _WRITTEN or src.suffix == ".py")
    if clash:
        raise ConversionError(
            f"dst={str(dst)!r} would overwrite the source {str(src)!r}; allowed: a folder other than the source's"
        )
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"dst={str(dst)!r} is a file; allowed: a new or empty folder")
    held = sorted(n for n in _WRITTEN if (dst / n).exists()) if dst.is_dir() else []
    if held:
        # another model's weights and config would be replaced, and its card and pictures would then describe them
        raise ConversionError(
            f"dst={str(dst)!r} already holds a model ({', '.join(held)}); allowed: a new or empty folder"
        )


def convert_simmim_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, **config_overrides
) -> SimMIMForPreTraining:
    """Convert a transformers `ViTForMaskedImageModeling` folder (or a `ViTModel` one, whose mask token and head
    are then freshly initialised) into `SimMIMForPreTraining`; save it to `dst` when given. The mask strategy is not
    part of transformers' config: pass `mask_ratio`, `mask_patch_size` etc. as overrides to record the right one."""
    model, fresh, _ = read_transformers_vit(resolve_source(src), **config_overrides)
    if fresh:
        warnings.warn(
            f"{src} lacks {fresh}: a ViT without SimMIM's head; the mask token and head start freshly initialised",
            stacklevel=2,
        )
    if dst is not None:
        model.save_pretrained(dst)
    return model


def read_transformers_vit(src: Path, **config_overrides):
    """(SimMIMForPreTraining, keys the folder lacked, keys of the folder no SimMIM model holds) of a transformers
    `ViTModel`, `ViTForImageClassification` or `ViTForMaskedImageModeling` folder."""
    _require_model_type(src, "vit")
    source, info = from_safetensors(ViTForMaskedImageModeling, src)
    fresh = sorted(info["missing_keys"])
    dropped = sorted(info["unexpected_keys"])
    cfg = source.config
    fields = _transformers_encoder_fields(cfg)
    # transformers' ViT learns its position table; the encoder stride must match the patch size in hf_mim
    fields.update(position_embedding_type="learned", encoder_stride=cfg.encoder_stride)
    fields.update(_preprocessor_fields(src))
    fields.update(config_overrides)
    if "mask_patch_size" not in config_overrides:
        fields["mask_patch_size"] = _largest_mask_patch(fields)
    config = SimMIMConfig(**fields)
    state = _transformers_to_hf_mim(source.state_dict(), config)
    model = _load(SimMIMForPreTraining, config, state, fresh_prefixes=("mask_token", "decoder."))
    renamed = {"vit.embeddings.mask_token": "mask_token", "decoder.0.weight": "decoder.proj.weight"}
    fresh = sorted({renamed.get(k, "decoder." if k.startswith("decoder.") else k) for k in fresh})
    return model, fresh, dropped


def _folder_model_type(src: Path) -> str | None:
    config_file = src / "config.json"
    return json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None


def _require_model_type(src: Path, expected: str) -> None:
    model_type = _folder_model_type(src)
    if model_type is None:
        raise ConversionError(f"{src} is a folder without config.json; expected a transformers {expected!r} checkpoint")
    if model_type != expected:
        raise ConversionError(f"{src}/config.json has model_type={model_type!r}; expected a {expected!r} folder here")


def _largest_mask_patch(fields: dict) -> int:
    """SimMIM's 32 px mask patches where they tile the image, else the patch size (plain random patches)."""
    image, patch = fields["image_size"], fields["patch_size"]
    sides = image if isinstance(image, (list, tuple)) else (image, image)
    return 32 if 32 % patch == 0 and all(side % 32 == 0 for side in sides) and 32 < min(sides) else patch


def convert_mae_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    **config_overrides,
) -> MAEForPreTraining:
    """Convert `src` (a transformers ViTMAE folder or an official MAE state-dict file) into `MAEForPreTraining`;
    save it to `dst` when given. `config_overrides` (for example `num_attention_heads=12`, `norm_pix_loss=False`)
    set fields the source does not record or that should differ."""
    src = Path(src)
    if src.is_dir():
        _require_model_type(src, "vit_mae")
        model = _from_transformers(src, config_overrides)
    elif src.is_file():
        model = _from_official(src, config_overrides)
    else:
        raise FileNotFoundError(f"no checkpoint at {src}")
    if dst is not None:
        model.save_pretrained(dst)
    return model


# ------------------------------------------------------------------------------------------------------------
# transformers ViTMAE
# ------------------------------------------------------------------------------------------------------------


def _from_transformers(src: Path, overrides: dict) -> MAEForPreTraining:
    source = load_checked(ViTMAEForPreTraining, src)
    cfg = source.config
    fields = {**_transformers_encoder_fields(cfg), **mae_decoder_fields(cfg)}
    fields.update(_preprocessor_fields(src))
    fields.update(overrides)
    config = MAEConfig(**fields)
    state = _transformers_to_hf_mim(source.state_dict(), config)
    return _load(MAEForPreTraining, config, state)


def mae_decoder_fields(cfg) -> dict:
    """The decoder and objective fields MAE's configs share (transformers' ViTMAEConfig and hf_mim's MAEConfig)."""
    return dict(
        decoder_hidden_size=cfg.decoder_hidden_size,
        decoder_num_hidden_layers=cfg.decoder_num_hidden_layers,
        decoder_num_attention_heads=cfg.decoder_num_attention_heads,
        decoder_intermediate_size=cfg.decoder_intermediate_size,
        mask_ratio=cfg.mask_ratio,
        norm_pix_loss=cfg.norm_pix_loss,
    )


def _transformers_encoder_fields(cfg) -> dict:
    """The encoder fields transformers' ViT configs and hf_mim's share, read from either."""
    return dict(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size if isinstance(cfg.patch_size, int) else int(cfg.patch_size[0]),
        num_channels=cfg.num_channels,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps,
        qkv_bias=cfg.qkv_bias,
    )


def _preprocessor_fields(src: Path) -> dict:
    preprocessor = src / "preprocessor_config.json"
    if preprocessor.is_file():
        proc = json.loads(preprocessor.read_text())
        if "image_mean" in proc and "image_std" in proc:
            return dict(image_mean=proc["image_mean"], image_std=proc["image_std"])
    return {}


# transformers v5 in-memory names; v4 names are rewritten to these first.
_V4_TO_V5 = [
    (r"^vit\.encoder\.layer\.", "vit.layers."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]

_TRANSFORMERS_RENAMES = {
    "vit.embeddings.cls_token": "vit.cls_token",
    "vit.embeddings.position_embeddings": "vit.pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "vit.patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "vit.patch_embed.proj.bias",
    "vit.layernorm.weight": "vit.norm.weight",
    "vit.layernorm.bias": "vit.norm.bias",
    "decoder.decoder_embed.weight": "decoder.embed.weight",
    "decoder.decoder_embed.bias": "decoder.embed.bias",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.decoder_pos_embed": "decoder.pos_embed",
    "decoder.decoder_norm.weight": "decoder.norm.weight",
    "decoder.decoder_norm.bias": "decoder.norm.bias",
    "decoder.decoder_pred.weight": "decoder.pred.weight",
    "decoder.decoder_pred.bias": "decoder.pred.bias",
    # ViTForMaskedImageModeling
    "vit.embeddings.mask_token": "mask_token",
    "decoder.0.weight": "decoder.proj.weight",
    "decoder.0.bias": "decoder.proj.bias",
}

_TRANSFORMERS_BLOCK = {
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def _transformers_to_hf_mim(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    normalised = {}
    for key, value in state.items():
        for pattern, repl in _V4_TO_V5:
            key = re.sub(pattern, repl, key)
        normalised[key] = value
    out = {new: normalised.pop(old) for old, new in _TRANSFORMERS_RENAMES.items() if old in normalised}
    for src_prefix, dst_prefix, depth in (
        ("vit.layers", "vit.blocks", config.num_hidden_layers),
        ("decoder.decoder_layers", "decoder.blocks", getattr(config, "decoder_num_hidden_layers", 0)),
    ):
        for i in range(depth):
            src, dst = f"{src_prefix}.{i}.", f"{dst_prefix}.{i}."
            for kind in ("weight", "bias"):
                parts = [normalised.pop(f"{src}attention.{p}_proj.{kind}", None) for p in "qkv"]
                if all(p is not None for p in parts):
                    out[f"{dst}attn.qkv.{kind}"] = torch.cat(parts, dim=0)
                for old, new in _TRANSFORMERS_BLOCK.items():
                    if f"{src}{old}.{kind}" in normalised:
                        out[f"{dst}{new}.{kind}"] = normalised.pop(f"{src}{old}.{kind}")
    if normalised:
        raise ConversionError(f"unrecognised transformers weights: {sorted(normalised)[:8]}")
    return out


# ------------------------------------------------------------------------------------------------------------
# facebookresearch/mae
# ------------------------------------------------------------------------------------------------------------


def load_official_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an official checkpoint. Never unpickles arbitrary objects: `weights_only=True`, with only
    `argparse.Namespace` (the `args` entry MAE's training script saves) allowed beside tensors."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise ConversionError(f"{path}: the safetensors weights cannot be read ({err})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refused an object that is not a tensor: what a checkpoint carrying code looks like
        first = str(err).strip().splitlines()[0]
        raise ConversionError(f"{path} holds more than tensors; refusing to unpickle it ({first})") from None
    except (RuntimeError, EOFError) as err:
        raise ConversionError(
            f"{path} is not a readable torch checkpoint ({str(err).strip().splitlines()[0]})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model')")
    return obj


_OFFICIAL_DECODER = [
    (r"^decoder_embed\.", "decoder.embed."),
    (r"^mask_token$", "decoder.mask_token"),
    (r"^decoder_pos_embed$", "decoder.pos_embed"),
    (r"^decoder_blocks\.", "decoder.blocks."),
    (r"^decoder_norm\.", "decoder.norm."),
    (r"^decoder_pred\.", "decoder.pred."),
]
_OFFICIAL_ENCODER = re.compile(r"^(cls_token|pos_embed|patch_embed\.|blocks\.|norm\.)")


def _from_official(path: Path, overrides: dict) -> MAEForPreTraining:
    model, fresh, dropped = read_official(path, overrides)
    if dropped:
        warnings.warn(f"dropping weights that MAE pretraining does not use: {dropped}", stacklevel=3)
    if fresh:
        config = model.config
        warnings.warn(
            f"{path} holds only the encoder: the decoder is freshly initialised "
            f"({config.decoder_num_hidden_layers} blocks, width {config.decoder_hidden_size}); "
            "fine for feature extraction and fine-tuning, but reconstructions need further pretraining",
            stacklevel=3,
        )
    return model


def read_official(path: Path, overrides: dict | None = None) -> tuple[MAEForPreTraining, list[str], list[str]]:
    """(MAEForPreTraining, ["decoder."] for an encoder-only file else [], keys no MAE holds: a fine-tuned
    checkpoint's head, ...) of a facebookresearch/mae state dict."""
    overrides = overrides or {}
    raw = load_official_state_dict(path)
    raw = {k.removeprefix("module."): v for k, v in raw.items()}  # DDP-saved dicts
    state, dropped = {}, []
    for key, value in raw.items():
        if _OFFICIAL_ENCODER.match(key):
            state["vit." + key] = value
            continue
        for pattern, repl in _OFFICIAL_DECODER:
            if re.match(pattern, key):
                state[re.sub(pattern, repl, key)] = value
                break
        else:
            dropped.append(key)
    if "vit.patch_embed.proj.weight" not in state:
        raise ConversionError(f"{path} is not an MAE/ViT state dict: no patch_embed.proj.weight")
    fields = {**_infer_official_config(state), **overrides}
    if "num_attention_heads" not in fields:
        raise ConversionError(
            f"cannot tell the number of attention heads of a width-{fields['hidden_size']} encoder from its weights; "
            "pass num_attention_heads"
        )
    config = MAEConfig(**fields)
    encoder_only = not any(k.startswith("decoder.") for k in state)
    fresh = ["decoder."] if encoder_only else []
    return _load(MAEForPreTraining, config, state, fresh_prefixes=tuple(fresh)), fresh, sorted(dropped)


def _infer_official_config(state: dict[str, torch.Tensor]) -> dict:
    proj = state["vit.patch_embed.proj.weight"]
    hidden, channels, patch, _ = proj.shape
    depth = _count_blocks(state, "vit.blocks.")
    num_patches = state["vit.pos_embed"].shape[1] - 1
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ConversionError(f"pos_embed has {num_patches} patch positions, not a square grid; pass image_size")
    fields = dict(
        image_size=side * patch,
        patch_size=patch,
        num_channels=channels,
        hidden_size=hidden,
        num_hidden_layers=depth,
        intermediate_size=state["vit.blocks.0.mlp.fc1.weight"].shape[0],
        qkv_bias="vit.blocks.0.attn.qkv.bias" in state,
        layer_norm_eps=1e-6,
    )
    if hidden in _HEADS_BY_WIDTH:
        fields["num_attention_heads"] = _HEADS_BY_WIDTH[hidden]
    if "decoder.embed.weight" in state:
        decoder_hidden = state["decoder.embed.weight"].shape[0]
        fields.update(
            decoder_hidden_size=decoder_hidden,
            decoder_num_hidden_layers=_count_blocks(state, "decoder.blocks."),
            decoder_intermediate_size=state["decoder.blocks.0.mlp.fc1.weight"].shape[0],
            decoder_num_attention_heads=_OFFICIAL_DECODER_HEADS,
        )
    return fields


def _count_blocks(state: dict, prefix: str) -> int:
    indices = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


# ------------------------------------------------------------------------------------------------------------


def _load(model_class, config, state: dict[str, torch.Tensor], fresh_prefixes: tuple[str, ...] = ()):
    """`model_class(config)` with `state` loaded; only keys under `fresh_prefixes` may stay initialised."""
    model = model_class(config)
    expected = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        raise ConversionError("shape mismatch (pass the right config overrides): " + "; ".join(mismatched[:5]))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(fresh_prefixes)]
    if missing or result.unexpected_keys:
        raise ConversionError(f"conversion left missing={missing[:8]} unexpected={result.unexpected_keys[:8]}")
    return model


__all__ = [
    "check_destination",
    "convert_checkpoint",
    "convert_mae_checkpoint",
    "convert_simmim_checkpoint",
    "load_official_state_dict",
]
