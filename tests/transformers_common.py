"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), taken from the source distribution of
the installed transformers at test time, never copied into this repository.

The sdist ships `tests/test_modeling_common.py` and `tests/test_configuration_common.py`, but not three modules they
import. Those are replaced by stand-ins, each for a stated reason:

- `tests/exporters/test_export.py` (`ExportTesterMixin`, the base class of `ModelTesterMixin`): its export tests
  drive ONNX, OpenVINO, TensorRT and ExecuTorch back ends; with no module to import they cannot run, and the
  stand-in is an empty mixin. hf_mim's own tests check `torch.compile` (one graph per training forward).
- `tests/generation/test_utils.py` (`GenerationTesterMixin`): the common tests use it only in `issubclass` checks of
  generative models, which hf_mim has none of; the stand-in is an empty class.
- `tests/utils/test_configuration_utils.py` (`config_common_kwargs`): a non-default value for every public field
  of `PreTrainedConfig`, which `ConfigTester.check_config_arguments_init` passes to each config. The stand-in
  builds it from the installed `PreTrainedConfig` and refuses to load if transformers adds a field it does not know.

The files are fetched once per transformers version with `pip download` (the configured package index; no Hub
access) into `$HF_MIM_TRANSFORMERS_TESTS_CACHE` or `~/.cache/hf_mim/transformers-tests/<version>`. Where they cannot
be fetched, the tests that need them are skipped with the reason, unless `HF_MIM_REQUIRE_TRANSFORMERS_TESTS=1`
(set by `.ci/run`), which turns that into a failure: CI must never pass by not running them.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"
SHIPPED = ("test_modeling_common.py", "test_configuration_common.py")

STAND_INS = {
    "exporters/test_export.py": """

class ExportTesterMixin:
    pass
""",
    "generation/test_utils.py": """

class GenerationTesterMixin:
    pass
""",
    "utils/test_configuration_utils.py": """
from transformers import PreTrainedConfig

# a value other than the default for each public field of PreTrainedConfig
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}

_not_passed = {"transformers_version", "is_encoder_decoder"}
_unknown = sorted(
    key
    for key in vars(PreTrainedConfig())
    if not key.startswith("_") and key not in config_common_kwargs and key not in _not_passed
)
if _unknown:
    raise ImportError(f"PreTrainedConfig has fields this stand-in does not know: {_unknown}")
""",
}


class TransformersTestsUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("HF_MIM_TRANSFORMERS_TESTS_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "hf_mim" / "transformers-tests"
    return base / transformers.__version__


def _download_sdist(into: Path) -> Path:
    """The sdist of the installed transformers version, through pip and its configured index."""
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        f"transformers=={transformers.__version__}", "--dest", str(into),
    ]  # fmt: skip
    # without build isolation pip reads the metadata with the setuptools already installed (3 s, not 15 s)
    for extra in (["--no-build-isolation"], []):
        result = subprocess.run(command + extra, capture_output=True, text=True, timeout=600)
        archives = sorted(into.glob("transformers-*.tar.gz"))
        if result.returncode == 0 and archives:
            return archives[0]
    raise TransformersTestsUnavailable(
        f"pip could not download the transformers=={transformers.__version__} sdist: "
        + (result.stderr.strip().splitlines() or ["no output"])[-1]
    )


def _build(target: Path) -> None:
    """Extract the two shipped files and write the stand-ins, into a folder renamed into place when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        scratch = Path(scratch)
        archive = _download_sdist(scratch)
        package = scratch / "build" / PACKAGE
        package.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            for name in SHIPPED:
                member = tar.getmember(f"transformers-{transformers.__version__}/tests/{name}")
                source = tar.extractfile(member)
                (package / name).write_bytes(source.read())
        for relative, text in {"__init__.py": "", **STAND_INS}.items():
            path = package / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            if relative in STAND_INS:
                text = f'"""A stand-in for tests/{relative}: see tests/transformers_common.py in hf_mim."""\n' + text
            path.write_text(text)
        try:
            os.replace(scratch / "build", target)
        except OSError:
            if not (target / PACKAGE / SHIPPED[0]).is_file():  # another process won the race: use its copy
                raise


def load():
    """The `transformers_common_tests` package's two modules, (test_modeling_common, test_configuration_common)."""
    root = cache_dir()
    if not (root / PACKAGE / SHIPPED[0]).is_file():
        if root.exists():  # ours are renamed into place whole: this folder is someone else's
            raise TransformersTestsUnavailable(f"{root} exists but holds no {PACKAGE}: not ours to replace")
        _build(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    return modeling, configuration


def required() -> bool:
    return os.environ.get("HF_MIM_REQUIRE_TRANSFORMERS_TESTS") == "1"
