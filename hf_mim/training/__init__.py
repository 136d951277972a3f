"""The pretraining pipeline behind `hf-mim pretrain`. `pretrain(PretrainArguments(...))` runs it from Python; a
method plugs in through its `MethodSpec` (`hf_mim.modeling.spec`), not here."""

from .presets import ENCODER_PRESETS
from .trainer import PretrainArguments, TrainingError, pretrain

__all__ = ["ENCODER_PRESETS", "PretrainArguments", "TrainingError", "pretrain"]
