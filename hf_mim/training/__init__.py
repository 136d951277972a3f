"""The pretraining pipeline behind `hf-mim pretrain`. `pretrain(PretrainArguments(...))` runs it from Python;
`TrainingMethod` / `TRAINING_METHODS` are where a method plugs in."""

from .methods import ENCODER_PRESETS, TRAINING_METHODS, TrainingMethod
from .trainer import PretrainArguments, TrainingError, pretrain

__all__ = ["ENCODER_PRESETS", "TRAINING_METHODS", "TrainingMethod", "PretrainArguments", "TrainingError", "pretrain"]
