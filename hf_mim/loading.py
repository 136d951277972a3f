"""How hf_mim's own commands load a checkpoint someone handed them: safetensors only, and only weights that cover
the model.

`from_pretrained` would unpickle a `pytorch_model.bin` when a folder has no safetensors (and pickles can run code),
would fill blocks that a hand-edited config.json adds with random weights (and an evaluation would then report an
accuracy for a model nobody trained), and answers a truncated file with a raw traceback. `load_checked` turns each
of these into one `CheckpointError` that names the folder and what is wrong.
"""

from __future__ import annotations

import os

from safetensors import SafetensorError
from transformers import AutoModel

from .errors import CheckpointError
from .modeling.auto import SPECS_BY_MODEL_TYPE


def from_safetensors(model_class, name_or_path: str | os.PathLike, **kwargs):
    """(model, loading info) of `model_class.from_pretrained(name_or_path, **kwargs)` read from safetensors only; a
    pickle-only folder, an unreadable file or tensors of the wrong shape raise `CheckpointError`."""
    # never the folder's own code: a "y" on stdin would otherwise answer transformers' prompt to run it
    kwargs.setdefault("trust_remote_code", False)
    _check_model_type(model_class, name_or_path, kwargs)
    try:
        return model_class.from_pretrained(name_or_path, use_safetensors=True, output_loading_info=True, **kwargs)
    except SafetensorError as err:
        raise CheckpointError(f"{name_or_path}: the safetensors weights cannot be read ({err})") from None
    except OSError as err:
        pickles = _pickle_files(name_or_path)
        if pickles:
            raise CheckpointError(
                f"{name_or_path} has only pickle weights ({', '.join(pickles)}); hf_mim reads safetensors only, since "
                "unpickling a file can run code. Convert it where you trust it: load it and save_pretrained it"
            ) from None
        raise CheckpointError(f"{name_or_path}: {str(err).strip().splitlines()[0]}") from None
    except RuntimeError as err:  # transformers' shape-mismatch report
        if "mismatch" not in str(err) and "size" not in str(err):
            raise
        raise CheckpointError(
            f"{name_or_path}: the weights do not fit the shapes config.json describes; was config.json edited?"
        ) from None


def load_checked(model_class, name_or_path: str | os.PathLike, *, new_prefixes: tuple[str, ...] = (), **kwargs):
    """`from_safetensors`, and every parameter and buffer of the model must come from the checkpoint, except those
    under `new_prefixes` (a classifier's fresh head); a missing tensor raises `CheckpointError`."""
    model, info = from_safetensors(model_class, name_or_path, **kwargs)
    missing = [key for key in info["missing_keys"] if not key.startswith(new_prefixes)]
    if missing:
        raise CheckpointError(
            f"{name_or_path}: {len(missing)} tensors the config asks for are not in the weights (for example "
            f"{', '.join(sorted(missing)[:3])}); was config.json edited? Loading it would leave them random"
        )
    return model


def model_class_for(config):
    """The class a saved config describes (its `architectures[0]`, among its method's classes), else AutoModel."""
    spec = SPECS_BY_MODEL_TYPE.get(config.model_type)
    name = (getattr(config, "architectures", None) or [None])[0]
    classes = {cls.__name__: cls for cls in (spec.auto_classes.values() if spec is not None else ())}
    return classes.get(name, AutoModel)


def _check_model_type(model_class, name_or_path, kwargs) -> None:
    """A concrete class (`MAEForPreTraining`) builds its own config from any config.json, with a warning only: a
    folder of another model type (or one whose type only its own code defines) is refused instead."""
    config_class = getattr(model_class, "config_class", None)
    expected = getattr(config_class, "model_type", None)
    if not expected or kwargs.get("config") is not None:
        return
    try:
        fields, _ = config_class.get_config_dict(name_or_path)
    except (OSError, ValueError):
        return  # from_pretrained says what is missing
    found = fields.get("model_type")
    if found != expected:
        raise CheckpointError(
            f"{name_or_path} holds a model of type {found!r}, not {expected!r} ({model_class.__name__}); load it "
            "with the class of its own method"
        )


def _pickle_files(name_or_path) -> list[str]:
    if not os.path.isdir(name_or_path):
        return []
    return sorted(n for n in os.listdir(name_or_path) if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")))


__all__ = ["from_safetensors", "load_checked", "model_class_for"]
