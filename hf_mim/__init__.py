"""hf_mim: masked-image-modeling pretraining as Hugging Face models.

Importing the package registers every method's config and models with transformers' Auto classes.
"""

__version__ = "0.1.0.dev0"

from .modeling import (
    MAEConfig,
    MAEForImageClassification,
    MAEForPreTraining,
    MAEForPreTrainingOutput,
    MAEModel,
    MAEPreTrainedModel,
    MIMConfig,
    MIMForImageClassification,
    MIMModel,
    MIMPreTrainedModel,
    ViTEncoder,
    build_image_processor,
    patchify,
    random_masking,
    unpatchify,
)
from .modeling.auto import METHODS

__all__ = [
    "MAEConfig",
    "MAEForImageClassification",
    "MAEForPreTraining",
    "MAEForPreTrainingOutput",
    "MAEModel",
    "MAEPreTrainedModel",
    "MIMConfig",
    "MIMForImageClassification",
    "MIMModel",
    "MIMPreTrainedModel",
    "ViTEncoder",
    "METHODS",
    "build_image_processor",
    "patchify",
    "random_masking",
    "unpatchify",
    "__version__",
]
