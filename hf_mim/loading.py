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


class CheckpointError(ValueError):
    """A checkpoint hf_mim will not load, with the reason meant to be shown as is."""


def from_safetensors(model_class, name_or_path: str | os.PathLike, **kwargs):
    """(model, loading info) of `model_class.from_pretrained(name_or_path, **kwargs)` read from safetensors only; a
    pickle-only folder, an unreadable file or tensors of the wrong shape raise `CheckpointError`."""
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


def _pickle_files(name_or_path) -> list[str]:
    if not os.path.isdir(name_or_path):
        return []
    return sorted(n for n in os.listdir(name_or_path) if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")))


__all__ = ["CheckpointError", "from_safetensors", "load_checked"]
