"""hf_mim: masked-image-modeling pretraining as Hugging Face models.

Importing the package registers every method's config and models with transformers' Auto classes.
"""

from . import hub  # noqa: F401  (installs the model-card and push hooks on every hf_mim model)
from . import modeling as _modeling
from .data.pipeline import ImageTransform
from .training.callbacks import EMATeacherCallback
from .training.monitor import KNNProbeCallback
from .version import __version__

# the shared pieces and every registered method's classes (hf_mim.MAEConfig, hf_mim.ADIOSForPreTraining, ...)
globals().update({name: getattr(_modeling, name) for name in _modeling.__all__})

__all__ = [*_modeling.__all__, "EMATeacherCallback", "ImageTransform", "KNNProbeCallback", "MIMTrainer", "__version__"]


def __getattr__(name):
    # MIMTrainer imports transformers.Trainer (most of a second); only its users pay for it
    if name == "MIMTrainer":
        from .training.hf_trainer import MIMTrainer

        return MIMTrainer
    raise AttributeError(f"module 'hf_mim' has no attribute {name!r}")
