"""Model cards and pictures for sharing hf_mim models."""

from .card import (
    GENERATED_MARKER,
    build_model_card,
    card_pictures,
    method_card,
    model_card_for_folder,
    parameter_counts,
    validate_model_card,
    write_model_card,
)

__all__ = [
    "GENERATED_MARKER",
    "build_model_card",
    "card_pictures",
    "method_card",
    "model_card_for_folder",
    "parameter_counts",
    "validate_model_card",
    "write_model_card",
]
