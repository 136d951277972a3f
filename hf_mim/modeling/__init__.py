from .backbone import MIMConfig, ViTEncoder, patchify, unpatchify
from .base import MIMModel, MIMPreTrainedModel, build_image_processor
from .classification import MIMForImageClassification
from .mae import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel, MAEPreTrainedModel
from .masking import random_masking
from .outputs import MAEForPreTrainingOutput
from . import auto  # noqa: F401  (registers every method with the Auto classes)
