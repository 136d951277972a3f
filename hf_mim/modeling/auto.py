"""The method registry: every method file's `METHOD` spec, registered with transformers' Auto classes.

Adding a method is one line here: its module's name in `METHOD_MODULES`.
"""

from __future__ import annotations

import importlib

import transformers

from .spec import MethodSpec

METHOD_MODULES = ("mae", "simmim", "cmae", "rmae", "adios", "beit", "tokenizer", "maskfeat")

#: name (`hf-mim pretrain --method`, the Hub tag) -> spec, in `METHOD_MODULES` order.
METHOD_SPECS: dict[str, MethodSpec] = {}
#: config `model_type` -> spec.
SPECS_BY_MODEL_TYPE: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> None:
    """Register one method: its Auto classes with transformers, transformers' ViT image processor for its config,
    and the spec in hf_mim's registry."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    config_class = spec.config_class
    # exist_ok: re-importing hf_mim (importlib.reload, notebooks) must not fail.
    transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_name, model_class in spec.auto_classes.items():
        if auto_name != "AutoConfig":
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)
    transformers.AutoImageProcessor.register(
        config_class, slow_image_processor_class=ViTImageProcessorPil, exist_ok=True
    )
    METHOD_SPECS[spec.name] = spec
    SPECS_BY_MODEL_TYPE[config_class.model_type] = spec


def method_spec(name_or_config) -> MethodSpec:
    """The spec of a method name ("mae"), a config `model_type` ("hf_mim_mae") or a config."""
    key = getattr(name_or_config, "model_type", name_or_config)
    spec = METHOD_SPECS.get(key) or SPECS_BY_MODEL_TYPE.get(key)
    if spec is None:
        raise ValueError(f"{key!r} is not an hf_mim method: one of {sorted(METHOD_SPECS)}")
    return spec


for _name in METHOD_MODULES:
    register_method(importlib.import_module(f".{_name}", __package__).METHOD)

__all__ = ["METHOD_MODULES", "METHOD_SPECS", "SPECS_BY_MODEL_TYPE", "method_spec", "register_method"]
