"""What every registered model class must do beyond transformers' common tests: accept any valid common geometry,
and build and load the ways transformers and accelerate build and load models (meta device, `init_empty_weights`,
`device_map`, `dtype`)."""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import init_empty_weights

from hf_mim.modeling import METHOD_SPECS, MIMConfig, MIMPreTrainedModel
from hf_mim.modeling.backbone import to_2tuple

#: The fields every ViT config shares; with image_size and patch_size, all a user needs to name.
COMMON = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
#: (image_size, patch_size) pairs for a forward and backward of every method: odd primes in the patch (3, 5, 7), odd
#: grids, the smallest grids, and 28 px images (Fashion-MNIST, MNIST) at their usual patch sizes.
TRAINING_GEOMETRIES = [(16, 2), (16, 8), (18, 3), (20, 5), (21, 7), (24, 6), (28, 4), (28, 7), (28, 14), (30, 10)]


def geometry_fields(spec, image_size: int, patch_size: int) -> dict:
    fields = dict(image_size=image_size, patch_size=patch_size)
    if issubclass(spec.config_class, MIMConfig):  # a ViT's (the visual tokenizer's has no transformer)
        fields.update(COMMON)
    return fields


def all_geometries():
    """Every image size from 16 to 224 px with every patch size from 2 to 16 px that divides it."""
    return [(size, patch) for size in range(16, 225) for patch in range(2, 17) if size % patch == 0]


@pytest.mark.parametrize("method", list(METHOD_SPECS))
def test_every_method_accepts_every_common_geometry(method):
    """A config from image_size, patch_size and the four ViT fields alone builds, for every image size of 16-224 px
    and patch size of 2-16 px that divides it: method-specific defaults (HOG cells, mask squares, the mask model's
    resolution, the tokenizer's stages) follow the geometry. The one refusal allowed is a single-patch image for a
    method that masks patches, in one line that names patch_size and a value that fits, which then builds."""
    spec = METHOD_SPECS[method]
    refused = []
    for image_size, patch_size in all_geometries():
        try:
            spec.config_class(**geometry_fields(spec, image_size, patch_size))
        except ValueError as error:
            refused.append((image_size, patch_size, str(error)))
    for image_size, patch_size, message in refused:
        assert image_size == patch_size, (image_size, patch_size, message)
        assert message.startswith(f"patch_size={patch_size} is invalid") and "\n" not in message, message
        fits = int(message.rsplit("patch_size=", 1)[1].split()[0])
        spec.config_class(**geometry_fields(spec, image_size, fits))
    masks = hasattr(spec.config_class(**geometry_fields(spec, 32, 8)), "mask_ratio")
    assert len(refused) == (1 if masks else 0), refused  # 16 px images in 16 px patches


@pytest.mark.parametrize("method", list(METHOD_SPECS))
def test_every_method_trains_at_unusual_geometries(method, caplog):
    spec = METHOD_SPECS[method]
    caplog.set_level(logging.ERROR)  # BEiT's warning about its untrained default tokenizer
    for image_size, patch_size in TRAINING_GEOMETRIES:
        config = spec.config_class(**geometry_fields(spec, image_size, patch_size))
        model = spec.pretraining_class(config).train()
        out = model(pixel_values=torch.randn(2, config.num_channels, image_size, image_size))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss), (image_size, patch_size, out.loss)
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (image_size, patch_size)


def model_classes():
    return [
        pytest.param(spec, model_class, id=model_class.__name__)
        for spec in METHOD_SPECS.values()
        for auto_name, model_class in spec.auto_classes.items()
        if auto_name != "AutoConfig" and issubclass(model_class, MIMPreTrainedModel)
    ]


def tiny(spec, **overrides):
    return spec.config_class(**{**spec.tiny_config, **overrides})


@pytest.mark.parametrize("spec, model_class", model_classes())
def test_builds_on_the_meta_device(spec, model_class):
    """`with torch.device("meta")`, as transformers' loading and large-model tools build: no value is read."""
    with torch.device("meta"):
        model = model_class(tiny(spec))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors.values()), {
        n: t.device for n, t in tensors.items() if t.device.type != "meta"
    }


@pytest.mark.parametrize("spec, model_class", model_classes())
def test_builds_under_init_empty_weights(spec, model_class):
    """accelerate's `init_empty_weights` (big-model inference): the parameters on the meta device, then a checkpoint's
    weights assigned in place give the model that wrote them, output for output."""
    config = tiny(spec, num_labels=3)
    torch.manual_seed(0)
    reference = model_class(config).eval()
    with init_empty_weights():
        model = model_class(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    model.load_state_dict(reference.state_dict(), assign=True)
    model.eval()
    inputs = inputs_for(model, config)
    with torch.no_grad():
        expected, out = (
            reference(**inputs, **method_inputs(spec, model_class, config)),
            model(**inputs, **method_inputs(spec, model_class, config)),
        )
    first = first_output(expected)
    torch.testing.assert_close(out[first], expected[first], rtol=0, atol=0)


def first_output(outputs) -> str:
    for key in ("loss", "logits", "last_hidden_state"):
        if getattr(outputs, key, None) is not None:
            return key
    raise AssertionError(f"no tensor output in {type(outputs).__name__}")


def method_inputs(spec, model_class, config, seed: int = 1) -> dict:
    """The pretraining model's per-image random inputs from a seeded generator (none for the other classes)."""
    if model_class is not spec.pretraining_class or spec.sample_inputs is None:
        return {}
    generator = torch.Generator().manual_seed(seed)
    draws = [spec.sample_inputs(config, config.grid_size, generator) for _ in range(2)]
    return {key: torch.stack([d[key] for d in draws]) for key in draws[0]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every pretraining model saved once, by method name."""
    folders = {}
    for spec in METHOD_SPECS.values():
        folder = tmp_path_factory.mktemp(spec.name)
        torch.manual_seed(0)
        spec.pretraining_class(tiny(spec)).save_pretrained(folder)
        folders[spec.name] = folder
    return folders


def inputs_for(model, config, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, config.num_channels, *to_2tuple(config.image_size), generator=generator).to(dtype)
    return {"pixel_values": pixels}


@pytest.mark.parametrize("spec, model_class", model_classes())
@pytest.mark.parametrize("device_map", ["cpu", "auto", {"": "cpu"}])
def test_loads_with_a_device_map(spec, model_class, device_map, saved):
    """`from_pretrained(..., device_map=...)`: transformers' fast loading (meta device, then the weights), which gives
    the same weights as a plain load, every one on the CPU here."""
    kwargs = {"num_labels": 3} if "Classification" in model_class.__name__ else {}
    plain = model_class.from_pretrained(saved[spec.name], **kwargs)
    mapped = model_class.from_pretrained(saved[spec.name], device_map=device_map, **kwargs)
    plain_state, mapped_state = plain.state_dict(), mapped.state_dict()
    assert plain_state.keys() == mapped_state.keys()
    for key, value in plain_state.items():
        assert mapped_state[key].device.type == "cpu", key
        if not key.startswith("classifier."):  # a new head is drawn at random in both
            assert torch.equal(value, mapped_state[key]), key


@pytest.mark.parametrize("spec, model_class", model_classes())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loads_and_runs_in_half_precision(spec, model_class, dtype, saved):
    """`from_pretrained(..., dtype=torch.bfloat16)` (and float16): the weights in that dtype, a forward that runs in
    it and gives finite outputs close to float32's. The visual tokenizer's codebook search stays in float32."""
    kwargs = {"num_labels": 3} if "Classification" in model_class.__name__ else {}
    full = model_class.from_pretrained(saved[spec.name], **kwargs).eval()
    half = model_class.from_pretrained(saved[spec.name], dtype=dtype, **kwargs).eval()
    assert {p.dtype for p in half.parameters()} == {dtype}
    if hasattr(half, "classifier"):
        half.classifier.load_state_dict(full.classifier.state_dict())
    config = full.config
    inputs = inputs_for(full, config)
    drawn = method_inputs(spec, model_class, config)
    with torch.no_grad():
        reference = full(**inputs, **drawn)
        out = half(**{k: v.to(dtype) for k, v in inputs.items()}, **drawn)
    first = first_output(reference)
    value, expected = out[first].float(), reference[first].float()
    assert torch.isfinite(value).all(), (first, value)
    tolerance = 0.1 if dtype == torch.bfloat16 else 0.02
    torch.testing.assert_close(value, expected, rtol=tolerance, atol=tolerance)
