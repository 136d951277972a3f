"""Registration with transformers' Auto classes. Each method adds one `register_method(...)` line below."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .adios import ADIOSConfig, ADIOSForImageClassification, ADIOSForPreTraining, ADIOSModel
from .beit import BEiTConfig, BEiTForImageClassification, BEiTForPreTraining, BEiTModel
from .cmae import CMAEConfig, CMAEForImageClassification, CMAEForPreTraining, CMAEModel
from .mae import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel
from .rmae import RMAEConfig, RMAEForImageClassification, RMAEForPreTraining, RMAEModel
from .simmim import SimMIMConfig, SimMIMForImageClassification, SimMIMForPreTraining, SimMIMModel
from .tokenizer import VisualTokenizer, VisualTokenizerConfig

#: model_type -> (config, encoder, pretraining, classification) for every registered method.
METHODS: dict[str, tuple] = {}


def _register_base(config_class, model_class) -> None:
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    # exist_ok: re-importing hf_mim (importlib.reload, notebooks) must not fail.
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoImageProcessor.register(config_class, slow_image_processor_class=ViTImageProcessorPil, exist_ok=True)


def register_method(config_class, model_class, pretraining_class, classification_class) -> None:
    _register_base(config_class, model_class)
    AutoModelForPreTraining.register(config_class, pretraining_class, exist_ok=True)
    AutoModelForImageClassification.register(config_class, classification_class, exist_ok=True)
    METHODS[config_class.model_type] = (config_class, model_class, pretraining_class, classification_class)


register_method(MAEConfig, MAEModel, MAEForPreTraining, MAEForImageClassification)
register_method(SimMIMConfig, SimMIMModel, SimMIMForPreTraining, SimMIMForImageClassification)
register_method(CMAEConfig, CMAEModel, CMAEForPreTraining, CMAEForImageClassification)
register_method(RMAEConfig, RMAEModel, RMAEForPreTraining, RMAEForImageClassification)
register_method(ADIOSConfig, ADIOSModel, ADIOSForPreTraining, ADIOSForImageClassification)
register_method(BEiTConfig, BEiTModel, BEiTForPreTraining, BEiTForImageClassification)
# Not a pretraining method of its own: BEiT's tokenizer loads with AutoConfig / AutoModel.
_register_base(VisualTokenizerConfig, VisualTokenizer)
