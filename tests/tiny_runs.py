"""Tiny `hf-mim pretrain` runs for tests: models of a few thousand parameters at 16 px, a few steps each."""

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


TINY_ENCODER = {k: v for k, v in TINY_MODEL.items() if not k.startswith("decoder_")}
METHOD_MODELS = {
    "mae": TINY_MODEL,
    "rmae": TINY_MODEL,
    "cmae": dict(TINY_ENCODER, projection_hidden_size=64, projection_size=16),
    "simmim": dict(TINY_ENCODER, mask_patch_size=8),
    "beit": dict(TINY_ENCODER, vocab_size=32, mask_min_num_patches=2),
    "visual-tokenizer": dict(vocab_size=32, embedding_dim=8, hidden_channels=8),
    "adios": dict(TINY_ENCODER, projection_hidden_size=64, projection_size=16, num_masks=3, occlusion_base_channels=8),
}
