from .adios import ADIOSConfig, ADIOSForImageClassification, ADIOSForPreTraining, ADIOSModel, OcclusionModel
from .backbone import MIMConfig, ViTEncoder, patchify, unpatchify
from .base import MIMModel, MIMPreTrainedModel, build_image_processor
from .beit import BEiTConfig, BEiTForImageClassification, BEiTForPreTraining, BEiTModel, BEiTPreTrainedModel
from .cmae import CMAEConfig, CMAEForImageClassification, CMAEForPreTraining, CMAEModel
from .classification import MIMForImageClassification
from .mae import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel, MAEPreTrainedModel
from .ema import EMATeacher
from .masking import MASK_STRATEGIES, MaskedMIMConfig, MaskingSpec, random_masking
from .outputs import (
    ADIOSForPreTrainingOutput,
    BEiTForPreTrainingOutput,
    CMAEForPreTrainingOutput,
    MAEForPreTrainingOutput,
    RMAEForPreTrainingOutput,
    SimMIMForPreTrainingOutput,
    VisualTokenizerOutput,
)
from .rmae import RMAEConfig, RMAEForImageClassification, RMAEForPreTraining, RMAEModel
from .simmim import (
    SimMIMConfig,
    SimMIMForImageClassification,
    SimMIMForPreTraining,
    SimMIMModel,
    SimMIMPreTrainedModel,
)
from .tokenizer import VisualTokenizer, VisualTokenizerConfig
from . import auto  # noqa: F401  (registers every method with the Auto classes)
