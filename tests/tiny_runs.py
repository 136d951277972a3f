"""Tiny `hf-mim pretrain` runs for tests: models of a few thousand parameters at 16 px, a few steps each."""

from hf_mim.modeling.auto import METHOD_SPECS
from hf_mim.training.trainer import PretrainArguments

TINY_MODEL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
)
TINY_FLAGS = ["--image-size", "16", "--patch-size", "4", "--logging-steps", "1", "--num-workers", "0"]


def tiny_args(tmp_path, **kw) -> PretrainArguments:
    fields = dict(
        output_dir=str(tmp_path / "run"),
        image_size=16,
        patch_size=4,
        batch_size=8,
        max_steps=4,
        logging_steps=1,
        num_workers=0,
        config_overrides=dict(TINY_MODEL),
    )
    fields.update(kw)
    return PretrainArguments(**fields)


# every registered method's tiny model, at the runs' own image and patch size
METHOD_MODELS = {
    name: {k: v for k, v in spec.tiny_config.items() if k not in ("image_size", "patch_size")}
    for name, spec in METHOD_SPECS.items()
}
