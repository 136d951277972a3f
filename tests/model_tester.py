"""Checks every hf_mim model class must pass. A method's test file subclasses `ModelTesterMixin` once, naming its
classes and a tiny config, and adds its method-specific checks beside it."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from hf_mim.modeling.backbone import to_2tuple


def compiled_graphs(fn, **inputs) -> tuple[int, list[str]]:
    """How many graphs torch.compile would cut `fn(**inputs)` into, and the first line of each graph break's reason."""
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(**inputs)
    return explanation.graph_count, [str(r.reason).splitlines()[0] for r in explanation.break_reasons]


class PixelsOnly(torch.utils.data.Dataset):
    """Random images as a dataset of {"pixel_values"} (and "labels") dicts, what transformers' Trainer feeds."""

    def __init__(self, n, labels=False, shape=(3, 32, 32)):
        g = torch.Generator().manual_seed(0)
        self.pixels = torch.randn(n, *shape, generator=g)
        self.labels = torch.arange(n) % 3 if labels else None

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        item = {"pixel_values": self.pixels[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def trainer_args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        **{"report_to": "none", "save_strategy": "no", "use_cpu": True, "dataloader_num_workers": 0, **kw},
    )


class ModelTesterMixin:
    config_class = None
    encoder_class = None
    pretraining_class = None
    classification_class = None
    batch_size = 2

    # -- to provide -------------------------------------------------------------------------------------------

    def get_config(self, **overrides):
        raise NotImplementedError

    def pretraining_inputs(self, config, seed: int = 0) -> dict:
        """pixel_values plus whatever makes the pretraining forward deterministic (noise, masks)."""
        raise NotImplementedError

    def check_pretraining_outputs(self, config, outputs, inputs) -> None:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------------------

    def pixel_values(self, config, seed: int = 0, size=None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        height, width = size or to_2tuple(config.image_size)
        return torch.randn(self.batch_size, config.num_channels, height, width, generator=g)

    def masked_inputs(self, config, seed: int = 0) -> dict:
        """pixel_values and seeded `bool_masked_pos` from the config's strategy: the inputs of the methods whose
        forward takes a mask (SimMIM, BEiT)."""
        g = torch.Generator().manual_seed(seed + 1)
        masks = config.masking_spec().sample_batch(self.batch_size, config.grid_size, generator=g)
        return {"pixel_values": self.pixel_values(config, seed), "bool_masked_pos": masks}

    def all_model_classes(self):
        return [c for c in (self.encoder_class, self.pretraining_class, self.classification_class) if c is not None]

    def inputs_for(self, model_class, config, seed: int = 0) -> dict:
        if model_class is self.pretraining_class:
            return self.pretraining_inputs(config, seed)
        inputs = {"pixel_values": self.pixel_values(config, seed)}
        if model_class is self.classification_class:
            inputs["labels"] = torch.arange(self.batch_size) % config.num_labels
        return inputs

    @staticmethod
    def scalar(model, outputs) -> torch.Tensor:
        if getattr(outputs, "loss", None) is not None:
            return outputs.loss
        return outputs.last_hidden_state.pow(2).mean() + outputs.pooler_output.pow(2).mean()

    @staticmethod
    def first_tensor(outputs) -> torch.Tensor:
        for key in ("loss", "logits", "last_hidden_state"):
            if getattr(outputs, key, None) is not None:
                return outputs[key]
        raise AssertionError("no tensor output")

    # -- checks -----------------------------------------------------------------------------------------------

    def test_config_json_round_trip(self, tmp_path):
        config = self.get_config()
        config.save_pretrained(tmp_path)
        reloaded = self.config_class.from_pretrained(tmp_path)
        assert reloaded.to_diff_dict() == config.to_diff_dict()
        assert json.loads(config.to_json_string())["model_type"].startswith("hf_mim_")
        assert self.config_class.from_dict(config.to_dict()).to_json_string() == config.to_json_string()

    def test_every_config_field_is_documented(self):
        from transformers import PretrainedConfig

        docs = "".join(cls.__doc__ or "" for cls in self.config_class.__mro__)
        fields = set(self.get_config().to_dict()) - set(PretrainedConfig().to_dict())
        undocumented = sorted(f for f in fields if f"{f} (`" not in docs)
        assert not undocumented, f"config fields without a docstring entry: {undocumented}"

    def test_pretraining_output_shapes(self):
        config = self.get_config()
        model = self.pretraining_class(config).eval()
        inputs = self.pretraining_inputs(config)
        with torch.no_grad():
            outputs = model(**inputs)
        assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
        self.check_pretraining_outputs(config, outputs, inputs)

    def test_encoder_output_shapes(self):
        config = self.get_config()
        model = self.encoder_class(config).eval()
        with torch.no_grad():
            out = model(pixel_values=self.pixel_values(config), output_hidden_states=True)
        expected = (self.batch_size, 1 + config.num_patches, config.hidden_size)
        assert out.last_hidden_state.shape == expected
        assert out.pooler_output.shape == (self.batch_size, config.hidden_size)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert all(h.shape == expected for h in out.hidden_states)
        as_tuple = model(pixel_values=self.pixel_values(config), return_dict=False)
        assert torch.equal(as_tuple[0], out.last_hidden_state)

    @pytest.mark.parametrize("which", ["encoder", "pretraining", "classification"])
    def test_every_trainable_parameter_gets_a_gradient(self, which):
        config = self.get_config(num_labels=3)
        model_class = getattr(self, f"{which}_class")
        model = model_class(config).train()
        outputs = model(**self.inputs_for(model_class, config))
        self.scalar(model, outputs).backward()
        missing = [
            n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
        ]
        assert not missing, f"no gradient reached {missing}"
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f"non-finite gradients in {bad}"

    def test_training_forward_has_no_graph_breaks(self):
        """The pretraining loss traces as one torch.compile graph: a graph break splits the step into pieces that
        are compiled apart, with eager Python between them (and, on a GPU, often a device sync)."""
        config = self.get_config()
        model = self.pretraining_class(config).train()
        graphs, reasons = compiled_graphs(
            lambda **kw: self.scalar(model, model(**kw)), **self.pretraining_inputs(config)
        )
        assert (graphs, reasons) == (1, [])

    def test_attention_weights_and_eager_attention_match_sdpa(self, tmp_path):
        """`output_attentions=True` returns each block's softmax weights, as transformers' ViTs do, and
        `attn_implementation="eager"` (per call site or at loading) gives sdpa's outputs."""
        config = self.get_config()
        model = self.encoder_class(config).eval()
        pixels = self.pixel_values(config)
        with torch.no_grad():
            sdpa = model(pixel_values=pixels).last_hidden_state
            out = model(pixel_values=pixels, output_attentions=True)
        tokens = 1 + config.num_patches
        assert len(out.attentions) == config.num_hidden_layers
        assert all(a.shape == (self.batch_size, config.num_attention_heads, tokens, tokens) for a in out.attentions)
        torch.testing.assert_close(
            out.attentions[0].sum(-1), torch.ones(self.batch_size, config.num_attention_heads, tokens)
        )
        torch.testing.assert_close(out.last_hidden_state, sdpa, rtol=0, atol=1e-5)
        model.save_pretrained(tmp_path)
        eager = self.encoder_class.from_pretrained(tmp_path, attn_implementation="eager").eval()
        assert eager.config._attn_implementation == "eager"
        with torch.no_grad():
            torch.testing.assert_close(eager(pixel_values=pixels).last_hidden_state, sdpa, rtol=0, atol=1e-5)

    def test_save_load_is_bit_identical(self, tmp_path):
        config = self.get_config()
        model = self.pretraining_class(config).eval()
        model.save_pretrained(tmp_path)
        files = set(os.listdir(tmp_path))
        assert "model.safetensors" in files and "config.json" in files and "preprocessor_config.json" in files
        assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files), files
        reloaded, info = self.pretraining_class.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
        original, restored = model.state_dict(), reloaded.state_dict()
        assert original.keys() == restored.keys()
        for key in original:
            assert torch.equal(original[key], restored[key]), key
        inputs = self.pretraining_inputs(config)
        with torch.no_grad():
            a, b = model(**inputs), reloaded.eval()(**inputs)
        assert torch.equal(a.loss, b.loss)

    def test_auto_classes_round_trip(self, tmp_path):
        config = self.get_config()
        model = self.pretraining_class(config)
        model.save_pretrained(tmp_path)
        assert type(AutoConfig.from_pretrained(tmp_path)) is self.config_class
        pretraining = AutoModelForPreTraining.from_pretrained(tmp_path)
        assert type(pretraining) is self.pretraining_class

        encoder, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
        assert type(encoder) is self.encoder_class
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        for key, value in encoder.state_dict().items():
            assert torch.equal(value, model.state_dict()[key]), key

        classifier, info = AutoModelForImageClassification.from_pretrained(
            tmp_path, num_labels=5, output_loading_info=True
        )
        assert type(classifier) is self.classification_class
        assert {k.split(".")[0] for k in info["missing_keys"]} == {"classifier"}, info
        assert not info["unexpected_keys"], info
        assert classifier.classifier.out_features == 5
        for key, value in classifier.vit.state_dict().items():
            assert torch.equal(value, model.vit.state_dict()[key]), key

        processor = AutoImageProcessor.from_pretrained(tmp_path)
        assert list(processor.image_mean) == list(config.image_mean)
        assert list(processor.image_std) == list(config.image_std)

    def test_gradient_checkpointing_gives_same_outputs_and_gradients(self):
        config = self.get_config()
        inputs = self.pretraining_inputs(config)
        results = []
        for checkpointing in (False, True):
            torch.manual_seed(0)
            model = self.pretraining_class(config).train()
            if checkpointing:
                # transformers 5 renamed gradient_checkpointing_enable (still there, deprecated); accept both
                enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
                enable()
                assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
            outputs = model(**inputs)
            outputs.loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((outputs.loss.detach(), grads))
        (loss_a, grads_a), (loss_b, grads_b) = results
        torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)

    def test_interpolate_pos_encoding_at_native_size_changes_nothing(self):
        config = self.get_config()
        torch.manual_seed(0)
        model = self.pretraining_class(config).eval()
        inputs = self.pretraining_inputs(config)
        encoder = self.encoder_class(config).eval()
        with torch.no_grad():
            a = model(**inputs, interpolate_pos_encoding=False)
            b = model(**inputs, interpolate_pos_encoding=True)
            c = encoder(pixel_values=inputs["pixel_values"], interpolate_pos_encoding=False)
            d = encoder(pixel_values=inputs["pixel_values"], interpolate_pos_encoding=True)
        assert torch.equal(a.loss, b.loss) and torch.equal(self.first_tensor(a), self.first_tensor(b))
        assert torch.equal(c.last_hidden_state, d.last_hidden_state)

    def test_other_resolutions_with_interpolation(self):
        config = self.get_config()
        p = config.patch_size
        encoder = self.encoder_class(config).eval()
        height, width = config.grid_size[0] * p + 2 * p, config.grid_size[1] * p + p  # non-square on purpose
        pixels = self.pixel_values(config, size=(height, width))
        with torch.no_grad():
            out = encoder(pixel_values=pixels, interpolate_pos_encoding=True)
        assert out.last_hidden_state.shape == (self.batch_size, 1 + (height // p) * (width // p), config.hidden_size)
        with pytest.raises(ValueError, match="interpolate_pos_encoding"):
            encoder(pixel_values=pixels)

    def test_encoder_is_deterministic_in_eval_mode(self):
        config = self.get_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, drop_path_rate=0.1)
        encoder = self.encoder_class(config).eval()
        pixels = self.pixel_values(config)
        with torch.no_grad():
            torch.manual_seed(1)
            a = encoder(pixel_values=pixels).last_hidden_state
            torch.manual_seed(2)
            b = encoder(pixel_values=pixels).last_hidden_state
        assert torch.equal(a, b)

    def test_wrong_input_shapes_raise(self):
        config = self.get_config()
        for model_class in self.all_model_classes():
            model = model_class(config)
            pixels = self.pixel_values(config)
            wrong_channels = torch.cat([pixels, pixels[:, :1]], dim=1)
            with pytest.raises(ValueError, match=rf"\(batch, {config.num_channels}, height, width\)"):
                model(pixel_values=wrong_channels)
            p = config.patch_size
            wrong_size = self.pixel_values(config, size=(config.grid_size[0] * p + p, config.grid_size[1] * p))
            with pytest.raises(ValueError, match="expects"):
                model(pixel_values=wrong_size)

    def test_trains_with_transformers_trainer_on_pixel_values_only(self, tmp_path):
        from transformers import Trainer

        config = self.get_config()
        model = self.pretraining_class(config)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        shape = (config.num_channels, *to_2tuple(config.image_size))
        trainer = Trainer(model=model, args=trainer_args(tmp_path), train_dataset=PixelsOnly(16, shape=shape))
        result = trainer.train()
        assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert len(losses) == 4
        params = dict(model.named_parameters())
        changed = {n for n in before if not torch.equal(before[n], params[n].detach())}
        assert changed == set(before), f"not updated: {sorted(set(before) - changed)}"
        assert all(torch.equal(frozen[n], params[n].detach()) for n in frozen), "a frozen parameter moved"
        trainer.save_model(tmp_path / "saved")
        assert (tmp_path / "saved" / "model.safetensors").is_file()
        reloaded = self.pretraining_class.from_pretrained(tmp_path / "saved")
        for key, value in model.state_dict().items():
            assert torch.equal(value, reloaded.state_dict()[key]), key

    def test_image_feature_extraction_pipeline(self, tmp_path):
        import numpy as np
        from PIL import Image
        from transformers import pipeline

        config = self.get_config()
        if config.num_channels != 3:
            pytest.skip("the pipeline feeds RGB images")
        self.pretraining_class(config).save_pretrained(tmp_path)
        pipe = pipeline("image-feature-extraction", model=str(tmp_path))
        image = Image.fromarray((np.random.default_rng(0).random((45, 30, 3)) * 255).astype("uint8"))
        features = pipe(image, return_tensors=True)
        encoder = AutoModel.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            expected = encoder(
                **AutoImageProcessor.from_pretrained(tmp_path)(image, return_tensors="pt")
            ).last_hidden_state
        assert features.shape == (1, 1 + config.num_patches, config.hidden_size)
        torch.testing.assert_close(features, expected)
