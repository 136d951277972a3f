"""transformers' own common model tests on every registered hf_mim class.

`ModelTesterMixin` and `ConfigTester` come from the installed transformers' source distribution
(`tests/transformers_common.py` fetches them; nothing of them is copied here). The tester classes follow
transformers' `tests/models/vit_mae/test_modeling_vit_mae.py`, with two differences that the mixin's
one-sequence-length-per-test-class design asks for:

- each method has two test classes: its encoder and classifier (every patch seen: 1 + L tokens), and its
  pretraining model (MAE and R-MAE encode the visible patches only: 1 + K tokens);
- the pretraining inputs carry the method's own per-image random inputs (masks, noise, colour jitter), drawn from a
  seeded generator as the data pipeline draws them. ViTMAE's test skips `test_determinism`,
  `test_model_outputs_equivalence` and `test_batching_equivalence` because its masks are random in every forward;
  with the masks given, hf_mim runs them.

Every skip beyond those transformers applies to its own ViT and ViTMAE is listed in `SKIPS` with its reason; the
docs/contributing.md lists them too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import unittest
import unittest.mock

import pytest
import torch
from torch import nn
from transformers.models.auto import modeling_auto as _auto_names

from hf_mim.modeling import METHOD_SPECS, MIMPreTrainedModel
from hf_mim.modeling.tokenizer import VisualTokenizer, encoder_state_layers

from . import transformers_common

try:
    _modeling_common, _configuration_common = transformers_common.load()
except (transformers_common.TransformersTestsUnavailable, ImportError) as error:
    if transformers_common.required():
        raise
    pytest.skip(f"transformers' common tests are unavailable: {error}", allow_module_level=True)

ModelTesterMixin = _modeling_common.ModelTesterMixin
ConfigTester = _configuration_common.ConfigTester
floats_tensor = _modeling_common.floats_tensor
ids_tensor = _modeling_common.ids_tensor

#: Skips transformers applies to its own ViT and ViTMAE (tests/models/vit*/test_modeling_vit*.py) that name a test
#: of this version's mixin.
TRANSFORMERS_SKIPS = {
    "test_inputs_embeds": "ViT does not use inputs_embeds",
    "test_flash_attn_2_inference_equivalence_right_padding": "not applicable to ViTs: no padding",
}

#: Skips beyond transformers' own, per test class name (`Test<Method><Kind>TransformersCommon`), each with its reason.
SKIPS: dict[str, dict[str, str]] = {
    "TestBEiTPretrainingTransformersCommon": {
        "test_torch_save_load": (
            "transformers' check_equal indexes the result of calling the state dict (`state_dict()[key]`) for boolean "
            "tensors, a TypeError in test_modeling_common.py itself; BEiT's frozen tokenizer holds the boolean buffer "
            "`tokenizer.quantizer.initialized`"
        ),
    },
}

#: Where the harness adapts a common test to hf_mim rather than skipping it (docs/contributing.md lists them).
ADAPTATIONS = {
    "_config_zero_init": "keeps `image_mean` and `image_std` (the data's normalisation, which the helper's `_std` "
    "substring match would set to 1e-10 as if it were an initialiser's std)",
    "test_model_outputs_equivalence": "compares boolean outputs (`bool_masked_pos`) as uint8: torch.allclose and the "
    "test's difference message cannot subtract booleans (transformers' Hiera test overrides it for the same output)",
    "test_eager_matches_sdpa_inference_*": "passes MAE and R-MAE the test's `bool_masked_pos` alone: the test gives "
    "every forward that takes `noise` a noise and every one that takes `bool_masked_pos` a mask, and these take either",
}


class MIMModelTester:
    """The model tester of transformers' `ViTMAEModelTester`, built from a method's `tiny_config`."""

    def __init__(self, parent, spec, kind: str, batch_size: int = 13):
        self.parent = parent
        self.spec = spec
        self.kind = kind
        self.batch_size = batch_size
        self.is_training = True
        self.use_labels = True
        self.type_sequence_label_size = 10
        fields = dict(spec.tiny_config)
        if kind != "tokenizer":
            fields.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        self.fields = fields
        config = self.get_config()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.num_hidden_layers = getattr(config, "num_hidden_layers", 0)
        self.hidden_size = getattr(config, "hidden_size", None)
        self.num_attention_heads = getattr(config, "num_attention_heads", None)
        self.mask_length = config.num_patches
        self.seq_length = 1 + self._encoded_patches(config)
        # read by transformers' eager-vs-sdpa test, which masks this many patches of every image where the forward
        # takes `bool_masked_pos`: as many as the config's strategy masks (MAE needs the same count in every row)
        if hasattr(config, "masking_spec"):
            self.num_masks = config.masking_spec().num_masked(config.grid_size)

    def _encoded_patches(self, config) -> int:
        """Patches the encoder's hidden states hold: the visible ones for MAE's pretraining models, else all."""
        if self.kind == "pretraining" and hasattr(config, "decoder_hidden_size"):
            return int(config.num_patches * (1 - config.mask_ratio))
        return config.num_patches

    def get_config(self):
        return self.spec.config_class(**self.fields)

    def method_inputs(self, config, seed: int = 0) -> dict:
        """The pretraining model's per-image random inputs, drawn as the data pipeline draws them."""
        if self.kind != "pretraining" or self.spec.sample_inputs is None:
            return {}
        generator = torch.Generator().manual_seed(seed)
        draws = [self.spec.sample_inputs(config, config.grid_size, generator) for _ in range(self.batch_size)]
        return {key: torch.stack([d[key] for d in draws]) for key in draws[0]}

    def prepare_config_and_inputs(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.type_sequence_label_size) if self.use_labels else None
        return config, pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, **self.method_inputs(config)}


def _name_tables(spec) -> list[tuple[dict, dict]]:
    """transformers' static name tables that its common tests read to tell a base model from a head (which gets
    labels, which is skipped in `test_training`...), each with this method's entry. `AutoModel.register` fills the
    lazy mappings only, so without these a registered class is treated as no known kind of model."""
    tables = {
        "AutoModel": _auto_names.MODEL_MAPPING_NAMES,
        "AutoModelForPreTraining": _auto_names.MODEL_FOR_PRETRAINING_MAPPING_NAMES,
        "AutoModelForImageClassification": _auto_names.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        "AutoModelForMaskedImageModeling": _auto_names.MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES,
    }
    return [
        (tables[auto_name], {spec.model_type: model_class.__name__})
        for auto_name, model_class in spec.auto_classes.items()
        if auto_name in tables
    ]


def _booleans_as_bytes(forward):
    """`forward` with boolean output tensors as uint8, the same values (see ADAPTATIONS)."""

    def convert(value):
        if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
            return value.to(torch.uint8)
        if isinstance(value, tuple):
            return tuple(convert(v) for v in value)
        return value

    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if isinstance(output, tuple):
            return convert(output)
        for key, value in output.items():
            output[key] = convert(value)
        return output

    return wrapped


_config_zero_init = _modeling_common._config_zero_init


def _config_zero_init_keeping_normalisation(config):
    zeroed = _config_zero_init(config)
    for field in ("image_mean", "image_std"):
        if hasattr(config, field):
            setattr(zeroed, field, getattr(config, field))
    return zeroed


_modeling_common._config_zero_init = _config_zero_init_keeping_normalisation


def _mask_alone(forward):
    """`forward` dropping `noise` when `bool_masked_pos` is given (see ADAPTATIONS)."""

    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        if kwargs.get("bool_masked_pos") is not None:
            kwargs.pop("noise", None)
        return forward(self, *args, **kwargs)

    return wrapped


def _with_mask_alone(test_name: str):
    def test(self):
        with contextlib.ExitStack() as stack:
            for model_class in self.all_model_classes:
                forward = _mask_alone(model_class.forward)
                stack.enter_context(unittest.mock.patch.object(model_class, "forward", forward))
            getattr(super(type(self), self), test_name)()

    test.__name__ = test_name
    return test


class MIMModelTest(ModelTesterMixin):
    """What every hf_mim test class shares; subclassed per method and kind below."""

    spec = None
    kind = None
    test_resize_embeddings = False
    test_torch_exportable = False  # ExportTesterMixin is not shipped in the sdist (see transformers_common.py)
    # transformers runs test_can_init_all_missing_weights on models whose file's copyright line says 2023 or later;
    # hf_mim's files carry none (read as year 0), and every class runs it
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = MIMModelTester(self, self.spec, self.kind)
        self.config_tester = ConfigTester(
            self,
            config_class=self.spec.config_class,
            has_text_modality=False,
            common_properties=self.common_properties,
            **self.model_tester.fields,
        )
        for table, entries in _name_tables(self.spec):
            patcher = unittest.mock.patch.dict(table, entries)
            patcher.start()
            self.addCleanup(patcher.stop)

    common_properties = None  # the mixin's: hidden_size, num_attention_heads, num_hidden_layers

    @property
    def additional_model_inputs(self) -> list[str]:
        """The method inputs transformers' eager-vs-sdpa test passes along with the pixels (it gives MAE and the
        mask-token methods a `bool_masked_pos` of its own, `num_masks` patches per image)."""
        config = self.model_tester.get_config()
        return [key for key in self.model_tester.method_inputs(config) if key not in ("noise", "bool_masked_pos")]

    def test_model_outputs_equivalence(self):
        with contextlib.ExitStack() as stack:
            for model_class in self.all_model_classes:
                forward = _booleans_as_bytes(model_class.forward)
                stack.enter_context(unittest.mock.patch.object(model_class, "forward", forward))
            super().test_model_outputs_equivalence()

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_initialization(self):
        """transformers' ViTMAE test: with every initialiser's std at 1e-10 (`_config_zero_init`), each trainable
        tensor's mean is 0 or 1, except the weights hf_mim draws from their fans on purpose (MIMPreTrainedModel's
        docstring): Linear and convolution weights, Xavier-uniform as in MAE (Kaiming-uniform in the visual
        tokenizer), and the fine-tuning head, trunc_normal(2e-5). Those are checked to have that spread instead."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        zeroed = _modeling_common._config_zero_init(config)
        for model_class in self.all_model_classes:
            model = model_class(config=zeroed)
            modules = dict(model.named_modules())
            for name, param in model.named_parameters():
                if not param.requires_grad:
                    continue
                owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
                expected = _fan_std(model, name, owner, param)
                if expected is None:
                    mean = ((param.data.mean() * 1e9).round() / 1e9).item()
                    self.assertIn(mean, [0.0, 1.0], msg=f"{name} of {model_class.__name__} is not initialised")
                else:
                    spread = param.data.float().std().item()
                    slack = 4 / math.sqrt(2 * param.numel()) + 0.05  # four standard errors of a std estimate
                    self.assertLess(abs(spread / expected - 1), slack, msg=f"{name}: std {spread}, not {expected}")

    def test_model_get_set_embeddings(self):
        # as transformers' ViT and ViTMAE tests: a module in, nothing or a Linear out
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output = model.get_output_embeddings()
            self.assertTrue(output is None or isinstance(output, nn.Linear))


class TokenizerTest(MIMModelTest):
    """The visual tokenizer is a convolutional autoencoder: no attention, and feature maps for hidden states, as
    transformers' ResNet and ConvNeXt tests treat theirs."""

    has_attentions = False
    common_properties = ["num_channels", "vocab_size", "embedding_dim"]

    def test_hidden_states_output(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        layers = encoder_state_layers(config)
        for model_class in self.all_model_classes:
            for from_config in (False, True):
                config.output_hidden_states = from_config
                model = model_class(config).eval()
                inputs = dict(inputs_dict) if from_config else {**inputs_dict, "output_hidden_states": True}
                with torch.no_grad():
                    hidden_states = model(**inputs).hidden_states
                self.assertEqual(len(hidden_states), len(layers))
                size = self.model_tester.image_size
                self.assertEqual(hidden_states[0].shape[-2:], (size, size))  # the stem keeps the resolution
                grid = size // config.patch_size
                self.assertEqual(hidden_states[-1].shape[-2:], (grid, grid))  # the last is on the token grid
                self.assertEqual(hidden_states[0].shape[0], self.model_tester.batch_size)


def _fan_std(model: nn.Module, name: str, owner: nn.Module, param: torch.Tensor) -> float | None:
    """The std hf_mim's initialisation gives a weight drawn from its fans (None for every other tensor)."""
    if not name.endswith("weight") or not isinstance(owner, (nn.Linear, nn.Conv2d)):
        return None
    if name == "classifier.weight":
        return 2e-5
    fan_out, fan_in = param.shape[0], param[0].numel()
    if isinstance(model, VisualTokenizer):
        return 1 / math.sqrt(3 * fan_in)  # kaiming_uniform(a=sqrt(5)): bound sqrt(1 / fan_in)
    return math.sqrt(2 / (fan_in + fan_out))  # xavier_uniform on the (out, in * k * k) view


def _skip(reason: str):
    def test(self):
        self.skipTest(reason)

    return test


EAGER = "test_eager_matches_sdpa_inference_"


def _test_classes():
    """Two unittest classes per method (encoder and classifier; pretraining), one for the visual tokenizer."""
    classes = {}
    for spec in METHOD_SPECS.values():
        auto = spec.auto_classes
        groups = {}
        if "AutoModelForPreTraining" in auto:
            groups["encoder"] = (auto["AutoModel"], auto["AutoModelForImageClassification"])
            groups["pretraining"] = (auto["AutoModelForPreTraining"],)
        else:
            groups["tokenizer"] = (auto["AutoModel"],)
        for kind, model_classes in groups.items():
            name = f"Test{spec.config_class.__name__.removesuffix('Config')}{kind.capitalize()}TransformersCommon"
            skips = {**TRANSFORMERS_SKIPS, **SKIPS.get(name, {})}
            body = {"spec": spec, "kind": kind, "all_model_classes": model_classes, "__module__": __name__}
            body.update({test: _skip(reason) for test, reason in skips.items()})
            if kind == "pretraining" and {"noise", "bool_masked_pos"} <= set(
                inspect.signature(model_classes[0].forward).parameters
            ):
                body.update({test: _with_mask_alone(test) for test in dir(MIMModelTest) if test.startswith(EAGER)})
            base = TokenizerTest if kind == "tokenizer" else MIMModelTest
            classes[name] = type(name, (base, unittest.TestCase), body)
    return classes


globals().update(_test_classes())


def test_every_skip_names_a_test_of_the_mixin():
    """A skip outlives its test when transformers renames or drops it: then it must go from the lists too."""
    named = set(TRANSFORMERS_SKIPS) | {test for skips in SKIPS.values() for test in skips}
    assert named and all(hasattr(ModelTesterMixin, test) for test in named), sorted(
        test for test in named if not hasattr(ModelTesterMixin, test)
    )
    assert set(SKIPS) <= {name for name, value in globals().items() if isinstance(value, type)}


def test_every_registered_class_is_under_the_common_tests():
    """A new method or model class is picked up here without an edit: every Auto-registered class is tested."""
    tested = {
        model_class
        for value in globals().values()
        if isinstance(value, type) and issubclass(value, MIMModelTest) and value.spec is not None
        for model_class in value.all_model_classes
    }
    registered = {
        model_class
        for spec in METHOD_SPECS.values()
        for auto_name, model_class in spec.auto_classes.items()
        if auto_name != "AutoConfig" and issubclass(model_class, MIMPreTrainedModel)
    }
    assert registered == tested, sorted(c.__name__ for c in registered ^ tested)
    assert len(tested) == 22


def test_the_loader_leaves_a_folder_it_did_not_write_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MIM_TRANSFORMERS_TESTS_CACHE", str(tmp_path))
    theirs = transformers_common.cache_dir()
    theirs.mkdir(parents=True)
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(transformers_common.TransformersTestsUnavailable, match="not ours to replace"):
        transformers_common.load()
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_an_unreachable_index_is_reported_not_hidden(tmp_path, monkeypatch):
    """Without a package index the loader raises (the module then skips, or fails where CI requires the tests)."""
    monkeypatch.setenv("HF_MIM_TRANSFORMERS_TESTS_CACHE", str(tmp_path / "cache"))
    for name, value in {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_NO_INDEX": "",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "3",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(transformers_common.TransformersTestsUnavailable, match="could not download"):
        transformers_common._build(transformers_common.cache_dir())
    assert not transformers_common.cache_dir().exists()  # nothing half-built left behind
