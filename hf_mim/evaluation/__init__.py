"""Evaluation of pretrained encoders: k-NN, linear probe, fine-tuning, occlusion-invariance CKA (`hf-mim evaluate`),
and pictures of what models reconstruct (`hf-mim visualize`).

Names are imported on first use: `hf-mim pretrain` builds its command line from this package's constants and should
not pay for importing `transformers.Trainer`."""

from importlib import import_module

_EXPORTS = {
    "LabelledSplits": ".data.labelled",
    "labels_per_class_subset": ".data.labelled",
    "load_labelled_splits": ".data.labelled",
    "linear_cka": "cka",
    "occlusion_features": "cka",
    "plot_cka": "cka",
    "LayerDecayTrainer": "finetune",
    "finetune": "finetune",
    "layer_decay_parameter_groups": "finetune",
    "encoder_features": "protocols",
    "extract_features": "protocols",
    "knn_scores": "protocols",
    "linear_probe": "protocols",
    "load_encoder": "protocols",
    "load_metric": "protocols",
    "PROTOCOLS": "runner",
    "EvaluateArguments": "runner",
    "evaluate_models": "runner",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
