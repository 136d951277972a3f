"""hf_mim's models: the shared pieces, then every registered method's public classes (its module's `__all__`)."""

import sys as _sys

from .backbone import MIMConfig, patchify, unpatchify
from .base import MIMModel, MIMPreTrainedModel, ViTEncoder, build_image_processor
from .classification import MIMForImageClassification
from .ema import EMATeacher
from .masking import MASK_STRATEGIES, MaskedMIMConfig, MaskIndices, MaskingSpec, random_masking
from .spec import MethodCard, MethodSpec, Picture, Recipe
from .auto import METHOD_SPECS, method_spec  # registers every method with the Auto classes

__all__ = [
    "EMATeacher",
    "MASK_STRATEGIES",
    "METHOD_SPECS",
    "MIMConfig",
    "MIMForImageClassification",
    "MIMModel",
    "MIMPreTrainedModel",
    "MaskIndices",
    "MaskedMIMConfig",
    "MaskingSpec",
    "MethodCard",
    "MethodSpec",
    "Picture",
    "Recipe",
    "ViTEncoder",
    "build_image_processor",
    "method_spec",
    "patchify",
    "random_masking",
    "unpatchify",
]


def _export_methods() -> None:
    """Every registered method's public names, beside the shared ones, so a new method needs no line here."""
    for spec in METHOD_SPECS.values():
        module = _sys.modules[spec.config_class.__module__]
        for name in module.__all__:
            if name != "METHOD":
                globals()[name] = getattr(module, name)
                __all__.append(name)


_export_methods()
