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
# repos of training runs: `hf-mim pretrain --push-to-hub`, that run's model reloaded and pushed with push_to_hub, and
# a MIMTrainer run pushed with push_to_hub
RUNS = ["pretrained", "reloaded", "trainer"]
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


#: What a pushed model needs to load without hf_mim (the README says so): these and what they require.
LOADING_NEEDS = ("torch", "transformers", "pillow")


def minimal_site(dest: Path, needs=LOADING_NEEDS) -> tuple[Path, set[str]]:
    """A folder holding only `needs` and their dependency closure (links into this environment's site-packages),
    for `python -S` with PYTHONPATH set to it: an environment where nothing else (hf_mim, datasets, accelerate,
    evaluate) is importable. Returns the folder and the distributions in it."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dest.mkdir(parents=True, exist_ok=True)
    todo, seen = [canonicalize_name(n) for n in needs], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
        site = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            if (site / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(site / top)
    return dest, seen


def _client(command, out, env, minimal: Path | None = None):
    """Run a hub_client command; with `minimal`, in `python -S` on that folder alone (see `minimal_site`)."""
    interpreter = [sys.executable, "-S"] if minimal else [sys.executable]
    if minimal:
        env = {**env, "PYTHONPATH": str(minimal)}
    result = subprocess.run(
        [*interpreter, str(CLIENT), command, str(out)], env=env, capture_output=True, text=True, timeout=600
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
    minimal, needed = minimal_site(out / "site")
    with HubServer() as hub:
        env["HF_ENDPOINT"] = hub.url
        _client("push", out, env)
        online = _client("load", out, env, minimal)
        files = {name: hub.files(f"tester/{name}") for name in [*CLASSES, *RUNS]}
        commits = {name: len(hub.commits(f"tester/{name}")) for name in [*CLASSES, *RUNS]}
    offline = _client("load", out, {**env, "HF_HUB_OFFLINE": "1"}, minimal)
    return {
        "needed": needed,
        "out": out,
        "push": json.loads((out / "push.json").read_text()),
        "online": online,
        "offline": offline,
        "files": files,
        "commits": commits,
    }


def test_every_model_class_is_pushed_in_one_commit_and_pulls_back_bit_identically(shared):
    # hub_client.push asserts state-dict equality and equal outputs after the pull; here: every class went through
    pushed = {name: entry["class"] for name, entry in shared["push"].items() if name in CLASSES}
    expected = {name: spec.pretraining_class.__name__ for name, spec in METHOD_SPECS.items()}
    assert pushed == {**expected, "mae-classifier": "MAEForImageClassification"}
    assert {"mae", "simmim", "cmae", "rmae", "adios", "beit", "visual-tokenizer"} <= set(pushed)
    # repo creation + one upload; MIMTrainer too, though it saved at every step with hub_strategy="every_save"
    assert all(count == 2 for count in shared["commits"].values()), shared["commits"]


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline-from-cache"])
def test_pushed_code_loads_without_hf_mim_and_gives_hf_mims_outputs(shared, offline):
    report = shared["offline" if offline else "online"]
    assert report.pop("hf_mim_modules") == []
    # the loading process saw torch, transformers, Pillow and what they require, nothing else
    assert set(report.pop("distributions")) == shared["needed"]
    assert not {"hf-mim", "datasets", "accelerate", "evaluate", "scikit-learn"} & shared["needed"]
    assert not [p for p in report.pop("sys_path") if "site-packages" in p]
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
    for name in ("pretrained", "reloaded"):
        run = shared["files"][name]
        assert {"loss_curve.png", "reconstruction.png", "training_summary.json", "training_args.json"} <= set(run)
        assert not [f for f in run if f.startswith("checkpoints")]
    assert (
        shared["files"]["reloaded"]["training_summary.json"] == shared["files"]["pretrained"]["training_summary.json"]
    )
    trainer = shared["files"]["trainer"]
    assert {"loss_curve.png", "reconstruction.png", "trainer_state.json", "training_summary.json"} <= set(trainer)
    assert "training_args.bin" not in trainer and not [f for f in trainer if f.startswith("checkpoint")]
    assert json.loads(trainer["training_args.json"])["hub_token"] != "hf_test_token"  # redacted


def test_hf_mim_pretrain_keeps_the_root_logger_quiet_while_it_pushes(shared):
    # at INFO the Hub client's HTTP library logs a line per request (about 10 for this push); hf_mim's lines remain
    log = shared["push"]["pretrain_log"]
    assert "HTTP Request" not in log and "httpx" not in log
    assert "INFO hf_mim." in log and "pushed to " in log


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
    tags = {**{name: name for name in METHOD_SPECS}, "mae-classifier": "mae", **dict.fromkeys(RUNS, "mae")}
    for name, files in shared["files"].items():
        card = ModelCard(files["README.md"].decode(), ignore_metadata_errors=False)
        data = card.data.to_dict()
        assert {"hf-mim", tags[name]} <= set(data["tags"]), name
        assert data["library_name"] == "transformers" and data["license"] == "apache-2.0"
        classifier = name == "mae-classifier"
        if name == "visual-tokenizer":  # no pipeline task returns token ids
            assert "pipeline_tag" not in data and card.text.startswith("\n# Visual tokenizer: tester/visual-tokenizer")
        else:
            assert data["pipeline_tag"] == ("image-classification" if classifier else "image-feature-extraction")
        assert data.get("base_model") == ("tester/mae" if classifier else None)
        for section in ("## Method", "## Architecture", "## Training", "## How to use", "## Limitations"):
            assert section in card.text, (name, section)
        assert "```bibtex\n@" in card.text and f'from_pretrained("tester/{name}", trust_remote_code=True)' in card.text
        assert "pip install hf_mim" not in card.text, name  # no index serves that name
        if name not in RUNS:
            assert (
                "Unknown. This model was not saved by an `hf-mim pretrain` or `transformers.Trainer` run" in card.text
            )
    for name, steps in (("pretrained", 2), ("reloaded", 2), ("trainer", 3)):
        run_card = ModelCard(shared["files"][name]["README.md"].decode())
        assert f"| Optimizer steps | {steps} |" in run_card.text and "![Training loss](loss_curve.png)" in run_card.text
        assert "![Reconstructions](reconstruction.png)" in run_card.text, name
    trainer_card = ModelCard(shared["files"]["trainer"]["README.md"].decode()).text
    assert "pretrained with `transformers.Trainer` (hf_mim's `mae` method) on 64 digits." in trainer_card
    assert "| Effective batch size | 8 |" in trainer_card and "| Seed | 42 |" in trainer_card


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
