"""Registration with transformers' Auto classes, from each method file's `AUTO_CLASSES`."""

from __future__ import annotations

import transformers

from . import adios, beit, cmae, mae, rmae, simmim, tokenizer

#: model_type -> (config, encoder, pretraining, classification) for every registered pretraining method.
METHODS: dict[str, tuple] = {}
#: model_type -> that method file's AUTO_CLASSES, the visual tokenizer included.
AUTO_CLASSES: dict[str, dict[str, type]] = {}


def register_method(auto_classes: dict[str, type]) -> None:
    """Register one method's classes, {"AutoConfig": config, "AutoModel": encoder, ...}, with transformers."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config_class = auto_classes["AutoConfig"]
    # exist_ok: re-importing hf_mim (importlib.reload, notebooks) must not fail.
    transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_name, model_class in auto_classes.items():
        if auto_name != "AutoConfig":
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
    transformers.AutoImageProcessor.register(
        config_class, slow_image_processor_class=ViTImageProcessorPil, exist_ok=True
    )
    AUTO_CLASSES[config_class.model_type] = auto_classes
    if "AutoModelForPreTraining" in auto_classes:
        METHODS[config_class.model_type] = tuple(
            auto_classes[k]
            for k in ("AutoConfig", "AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification")
        )


for _module in (mae, simmim, cmae, rmae, adios, beit, tokenizer):
    register_method(_module.AUTO_CLASSES)
