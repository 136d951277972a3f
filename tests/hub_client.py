"""Run in subprocesses by test_hub.py against the local Hub server (tests/hub_server.py): `push OUT` builds one tiny
model of every hf_mim class, pushes each with hf_mim's own push paths, pulls each back with hf_mim and checks it
bit for bit, and writes reference outputs; `load OUT` loads every pushed repo with transformers alone (hf_mim
blocked from import) and compares with those references. Tensors travel as safetensors, never pickles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

# The methods' tiny ViT (hf_mim.modeling.spec.TINY_VIT) written out: `load` runs with hf_mim blocked from import.
TINY = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)
DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2)
NUM_LABELS = 3


def build_models():
    """repo name -> (model, how it is pushed). One model per class the issue names."""
    import hf_mim

    torch.manual_seed(0)
    # one pretraining model of every registered method, at its tiny config, and one classifier
    models = {
        name: spec.pretraining_class(spec.config_class(**spec.tiny_config))
        for name, spec in hf_mim.METHOD_SPECS.items()
    }
    models["mae-classifier"] = hf_mim.MAEForImageClassification(hf_mim.MAEConfig(**TINY, num_labels=NUM_LABELS))
    for model in models.values():
        model.eval()
    return models


def fixed_inputs():
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    picture = Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy())
    return pixels, picture


def push(out: Path) -> None:
    import subprocess

    from safetensors.torch import save_file
    from transformers import AutoImageProcessor, AutoModel

    import hf_mim

    pixels, picture = fixed_inputs()
    reference, report = {"pixels": pixels}, {}
    for name, model in build_models().items():
        repo = f"tester/{name}"
        if name == "simmim":  # the CLI path: save, then `hf-mim push`
            folder = out / name
            model.save_pretrained(folder)
            subprocess.run([sys.executable, "-m", "hf_mim", "push", str(folder), repo], check=True)
        elif name == "mae-classifier":
            model.push_to_hub(repo, base_model="tester/mae")
        else:
            model.push_to_hub(repo)
        pulled = type(model).from_pretrained(repo).eval()
        ours, theirs = model.state_dict(), pulled.state_dict()
        assert ours.keys() == theirs.keys(), (name, ours.keys() ^ theirs.keys())
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
        with torch.no_grad():
            if not hasattr(model, "vit"):  # the visual tokenizer: token ids, not features
                reference[name] = model.get_codebook_indices(pixels)
                assert torch.equal(pulled.get_codebook_indices(pixels), reference[name])
            else:
                encoder = AutoModel.from_pretrained(repo).eval()
                assert type(encoder).__module__.startswith("hf_mim."), type(encoder)
                reference[name] = encoder(pixels).last_hidden_state
                processed = AutoImageProcessor.from_pretrained(repo)(images=picture, return_tensors="pt")
                reference[f"{name}.pipeline"] = encoder(**processed).last_hidden_state
                if name == "mae-classifier":
                    reference[f"{name}.logits"] = model(pixels).logits
                    assert torch.equal(pulled(pixels).logits, reference[f"{name}.logits"])
        report[name] = {"class": type(model).__name__}
    # `hf-mim pretrain --push-to-hub`: a 2-step run on the built-in data, pushed with its records and pictures
    pretrain = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_mim",
            "pretrain",
            "--max-steps",
            "2",
            "--batch-size",
            "16",
            "--num-workers",
            "0",
            "--model-size",
            "tiny",
            "--output-dir",
            str(out / "run"),
            "--push-to-hub",
            "tester/pretrained",
        ],
        capture_output=True,
        text=True,
    )
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    # the root logger stays quiet: no line per HTTP request of the Hub client
    report["pretrain_log"] = pretrain.stdout + pretrain.stderr
    # the same run's model, reloaded and pushed unchanged with push_to_hub: its records and pictures go along
    from transformers import AutoModelForPreTraining

    AutoModelForPreTraining.from_pretrained(out / "run").push_to_hub("tester/reloaded")
    trainer_push(out)
    # the server's YAML validation, through huggingface_hub's client
    from huggingface_hub import ModelCard

    try:
        ModelCard("---\nlicense: not-a-license\n---\n# card\n").validate()
    except ValueError as err:
        report["remote_yaml_rejects"] = str(err)
    ModelCard((out / "run" / "README.md").read_text()).validate()
    save_file({k: v.contiguous() for k, v in reference.items()}, str(out / "reference.safetensors"))
    (out / "push.json").write_text(json.dumps(report))
    assert hf_mim.__version__


def trainer_push(out: Path) -> None:
    """A 3-step MIMTrainer run on the built-in digits with push_to_hub=True and a push at every save: MIMTrainer
    pushes once, at the end, through hf_mim's push."""
    from transformers import TrainingArguments

    import hf_mim
    from hf_mim.data.sources import builtin_digits

    torch.manual_seed(0)
    model = hf_mim.MAEForPreTraining(hf_mim.MAEConfig(**{**TINY, "num_channels": 1}, **DECODER))
    digits = builtin_digits("train").select(range(64))
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=8,
        max_steps=3,
        logging_steps=1,
        save_steps=1,
        report_to="none",
        use_cpu=True,
        push_to_hub=True,
        hub_model_id="tester/trainer",
        hub_strategy="every_save",
    )
    train = digits.with_transform(hf_mim.ImageTransform.from_config(model.config))
    trainer = hf_mim.MIMTrainer(model=model, args=args, train_dataset=train, run_info={"dataset": "64 digits"})
    trainer.train()
    trainer.push_to_hub()


def load(out: Path) -> None:
    import importlib.abc

    class BlockHFMIM(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_mim" or name.startswith("hf_mim."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, BlockHFMIM())
    try:
        import hf_mim  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("hf_mim is importable in the no-hf_mim environment")

    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    reference = load_file(str(out / "reference.safetensors"))
    pixels, picture = fixed_inputs()
    assert torch.equal(pixels, reference["pixels"])
    report = {}
    pushed = json.loads((out / "push.json").read_text())
    for name in [n for n, entry in pushed.items() if isinstance(entry, dict) and "class" in entry]:
        repo = f"tester/{name}"
        model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        entry = {"class": type(model).__name__}
        with torch.no_grad():
            if name == "visual-tokenizer":
                entry["max_abs_diff"] = int((model.get_codebook_indices(pixels) != reference[name]).sum())
            else:
                entry["max_abs_diff"] = float((model(pixels).last_hidden_state - reference[name]).abs().max())
                classifier = AutoModelForImageClassification.from_pretrained(
                    repo, trust_remote_code=True, num_labels=5 if name != "mae-classifier" else NUM_LABELS
                ).eval()
                logits = classifier(pixels).logits
                entry["classifier"] = [type(classifier).__name__, list(logits.shape)]
                if name == "mae-classifier":
                    entry["logits_diff"] = float((logits - reference[f"{name}.logits"]).abs().max())
                extractor = pipeline("image-feature-extraction", model=repo, trust_remote_code=True)
                features = torch.tensor(extractor(picture))
                entry["pipeline_diff"] = float((features - reference[f"{name}.pipeline"]).abs().max())
        report[name] = entry
    report["hf_mim_modules"] = sorted(m for m in sys.modules if m == "hf_mim" or m.startswith("hf_mim."))
    report["sys_path"] = sys.path
    import re
    from importlib import metadata

    # normalised as packaging's canonicalize_name does
    report["distributions"] = sorted(
        {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in metadata.distributions()}
    )
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    command, out = sys.argv[1], Path(sys.argv[2])
    {"push": push, "load": load}[command](out)
