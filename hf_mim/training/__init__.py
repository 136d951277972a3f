"""The pretraining pipeline behind `hf-mim pretrain`. `pretrain(PretrainArguments(...))` runs it from Python; a
method plugs in through its `MethodSpec` (`hf_mim.modeling.spec`), not here."""

from ..data.pipeline import ImageTransform
from ..errors import TrainingError
from .arguments import PretrainArguments
from .presets import ENCODER_PRESETS
from .trainer import pretrain

__all__ = [
    "ENCODER_PRESETS",
    "ImageTransform",
    "MIMTrainer",
    "PretrainArguments",
    "TrainingError",
    "cpu_process_group_if_needed",
    "pretrain",
]


def __getattr__(name):
    # the Trainer path imports transformers.Trainer (most of a second); `import hf_mim` does not need it
    if name in ("MIMTrainer", "cpu_process_group_if_needed"):
        from . import hf_trainer

        return getattr(hf_trainer, name)
    raise AttributeError(f"module 'hf_mim.training' has no attribute {name!r}")
