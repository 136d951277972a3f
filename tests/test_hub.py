"""Sharing over real HTTP: every model class is pushed to a local Hub-protocol server (tests/hub_server.py) through
huggingface_hub's own client, pulled back, and loaded by transformers alone with hf_mim blocked from import, then
again from the cache with HF_HUB_OFFLINE=1 and the server gone. The client side runs in subprocesses
(tests/hub_client.py): huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from hf_mim.modeling.auto import METHOD_SPECS
from tests.hub_server import HubServer

CLIENT = Path(__file__).with_name("hub_client.py")
ROOT = CLIENT.parent.parent
CLASSES = [*METHOD_SPECS, "mae-classifier"]
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _client(command, out, env):
    result = subprocess.run(
        [sys.executable, str(CLIENT), command, str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    return json.loads(lines[-1][len("REPORT ") :]) if lines else None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One push of every class, one load without hf_mim while the server runs, one offline load after it stopped."""
    out = tmp_path_factory.mktemp("hub")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",  # the server is on loopback; nothing leaves the machine
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": str(out / "hf_home"),
        "HF_TOKEN": "hf_test_token",
        "PYTHONPATH": str(ROOT),
    }
    with HubServer() as hub:
        env["HF_ENDPOINT"] = hub.url
        _client("push", out, env)
        online = _client("load", out, env)
        files = {name: hub.files(f"tester/{name}") for name in [*CLASSES, "pretrained"]}
        commits = {name: len(hub.commits(f"tester/{name}")) for name in CLASSES}
    offline = _client("load", out, {**env, "HF_HUB_OFFLINE": "1"})
    return {
        "out": out,
        "push": json.loads((out / "push.json").read_text()),
        "online": online,
        "offline": offline,
        "files": files,
        "commits": commits,
    }


def test_every_model_class_is_pushed_in_one_commit_and_pulls_back_bit_identically(shared):
    # hub_client.push asserts state-dict equality and equal outputs after the pull; here: every class went through
    pushed = {name: entry["class"] for name, entry in shared["push"].items() if name != "remote_yaml_rejects"}
    expected = {name: spec.pretraining_class.__name__ for name, spec in METHOD_SPECS.items()}
    assert pushed == {**expected, "mae-classifier": "MAEForImageClassification"}
    assert {"mae", "simmim", "cmae", "rmae", "adios", "beit", "visual-tokenizer"} <= set(pushed)
    assert all(count == 2 for count in shared["commits"].values()), shared["commits"]  # repo creation + one upload


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline-from-cache"])
def test_pushed_code_loads_without_hf_mim_and_gives_hf_mims_outputs(shared, offline):
    report = shared["offline" if offline else "online"]
    assert report.pop("hf_mim_modules") == []
    assert sorted(report) == sorted(CLASSES)
    for name, entry in report.items():
        assert entry["max_abs_diff"] == 0, (name, entry)
        if name != "visual-tokenizer":
            assert entry["pipeline_diff"] == 0, (name, entry)
            assert entry["classifier"][1] == [2, 3 if name == "mae-classifier" else 5]
    assert report["mae-classifier"]["logits_diff"] == 0
    assert report["adios"]["class"] == "ADIOSModel" and report["visual-tokenizer"]["class"] == "VisualTokenizer"


def test_repos_hold_safetensors_config_with_auto_map_processor_code_and_card_only(shared):
    for name, files in shared["files"].items():
        assert not [f for f in files if f.endswith(PICKLES)], name
        assert "model.safetensors" in files and "preprocessor_config.json" in files and "README.md" in files
        config = json.loads(files["config.json"])
        for auto_name, reference in config["auto_map"].items():
            module, cls = reference.split(".")
            assert f"{module}.py" in files, (name, auto_name)
            assert f"class {cls}(" in files[f"{module}.py"].decode(), (name, reference)
        spec = METHOD_SPECS.get(name.removesuffix("-classifier"), METHOD_SPECS["mae"])
        assert set(config["auto_map"]) == set(spec.auto_classes), name  # every Auto class the method registers
    assert "AutoModelForMaskedImageModeling" in json.loads(shared["files"]["simmim"]["config.json"])["auto_map"]
    run = shared["files"]["pretrained"]
    assert {"loss_curve.png", "reconstruction.png", "training_summary.json", "training_args.json"} <= set(run)
    assert not [f for f in run if f.startswith("checkpoints")]


def _imports(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_uploaded_modeling_code_imports_only_torch_transformers_and_the_standard_library(shared):
    for name, files in shared["files"].items():
        code = {f: data.decode() for f, data in files.items() if f.endswith(".py")}
        assert code, name
        for filename, source in code.items():
            outside = _imports(source) - set(sys.stdlib_module_names) - {"torch", "transformers", "__future__"}
            assert not outside, (name, filename, outside)
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.level == 1 and f"{node.module}.py" in code, (name, filename, node.module)


def test_cards_on_the_hub_carry_metadata_and_every_section(shared):
    tags = {**{name: name for name in METHOD_SPECS}, "mae-classifier": "mae", "pretrained": "mae"}
    for name, files in shared["files"].items():
        card = ModelCard(files["README.md"].decode(), ignore_metadata_errors=False)
        data = card.data.to_dict()
        assert {"hf-mim", tags[name]} <= set(data["tags"]), name
        assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
        classifier = name == "mae-classifier"
        assert data["pipeline_tag"] == ("image-classification" if classifier else "image-feature-extraction")
        assert data.get("base_model") == ("tester/mae" if classifier else None)
        for section in ("## Method", "## Architecture", "## Training", "## How to use", "## Limitations"):
            assert section in card.text, (name, section)
        assert "```bibtex\n@" in card.text and f'from_pretrained("tester/{name}", trust_remote_code=True)' in card.text
        if name != "pretrained":
            assert "Unknown. This model was not saved by an `hf-mim pretrain` run" in card.text
    run_card = ModelCard(shared["files"]["pretrained"]["README.md"].decode())
    assert "| Optimizer steps | 2 |" in run_card.text and "![Training loss](loss_curve.png)" in run_card.text
    assert "![Reconstructions](reconstruction.png)" in run_card.text


def test_the_servers_yaml_validation_rejects_bad_metadata_through_the_client(shared):
    assert "license" in shared["push"]["remote_yaml_rejects"]


@pytest.mark.parametrize(
    "repo_id", ["../evil", "a/../b", "/abs/repo", "C:repo", "c:\\\\x", "\\\\\\\\server\\\\share", "a/b/c", "", "a--b"]
)
def test_push_rejects_unsafe_repo_ids_before_any_request(tmp_path, repo_id):
    from hf_mim.hub import push_folder

    with pytest.raises(ValueError, match="repo_id="):
        push_folder(tmp_path, repo_id)


def test_a_card_with_invalid_metadata_is_refused_before_any_upload(tmp_path):
    import hf_mim
    from hf_mim.hub import push_folder

    model = hf_mim.MAEModel(
        hf_mim.MAEConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    model.save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("---\nlicense: not-a-license\n---\n# my card\n")  # a person's card
    # HF_HUB_OFFLINE=1 in the test session: a request would raise OfflineModeIsEnabled, not this ValueError
    with pytest.raises(ValueError, match="license='not-a-license'"):
        push_folder(tmp_path, "tester/x")
