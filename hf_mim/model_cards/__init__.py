"""Model cards and pictures for sharing hf_mim models."""

from .card import (
    GENERATED_MARKER,
    PICTURES,
    build_model_card,
    model_card_for_folder,
    parameter_counts,
    validate_model_card,
    write_model_card,
)
from .methods import METHOD_CARDS, MethodCard

__all__ = [
    "GENERATED_MARKER",
    "METHOD_CARDS",
    "MethodCard",
    "PICTURES",
    "build_model_card",
    "model_card_for_folder",
    "parameter_counts",
    "validate_model_card",
    "write_model_card",
]
