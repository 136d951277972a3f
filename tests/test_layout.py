"""The package's layout holds: imports at the top (no circles, nothing reaching back into `hf_mim` itself), one
per-sample pipeline with one bad-image policy, the user-facing errors in one module, the version from metadata."""

import ast
import importlib
import pathlib
import re

import pytest
import torch

import hf_mim
from hf_mim import errors
from hf_mim.data.pipeline import DROP, REPLACE, settle

PACKAGE = pathlib.Path(hf_mim.__file__).parent
# the command line imports each subcommand when it runs (`hf-mim --help` must not import transformers.Trainer), and
# the package __init__ files import MIMTrainer on first use: the only in-function imports of hf_mim's own modules
LAZY_BY_DESIGN = {"cli.py", "__init__.py", "training/__init__.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _internal_imports(name: str, path: pathlib.Path):
    """(module imported, whether at the top, line) of each import of an hf_mim module in `path`."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level else []
            target = ".".join(base + [node.module or node.names[0].name]) if node.level else node.module
        elif isinstance(node, ast.Import):
            target = node.names[0].name
        else:
            continue
        if target == "hf_mim" or target.startswith("hf_mim."):
            yield target, id(node) in top, node.lineno


def test_imports_of_hf_mim_modules_sit_at_the_top_of_the_module():
    inner = [
        f"{path.relative_to(PACKAGE)}:{line} imports {target}"
        for name, path in _modules()
        if str(path.relative_to(PACKAGE)) not in LAZY_BY_DESIGN
        for target, at_top, line in _internal_imports(name, path)
        if not at_top
    ]
    assert not inner, inner


def test_no_module_imports_the_package_itself():
    back_up = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for name, path in _modules()
        if path != PACKAGE / "__init__.py"
        for target, _, line in _internal_imports(name, path)
        if target == "hf_mim"
    ]
    assert not back_up, back_up


def test_top_level_imports_form_no_circle():
    modules = dict(_modules())
    graph = {
        name: {t for t, at_top, _ in _internal_imports(name, path) if at_top and t in modules and t != name}
        for name, path in modules.items()
        if path.name != "__init__.py"
    }
    graph = {name: {t for t in targets if modules[t].name != "__init__.py"} for name, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join(trail + [nxt])}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def _item(name, error=None):
    return {"pixel_values": None if error else torch.full((1,), float(len(name))), "error": error, "name": name}


def test_settle_replaces_bad_samples_by_the_good_ones_of_their_batch_or_drops_them():
    items = [_item("a"), _item("bb", "broken"), _item("ccc"), _item("dddd", "broken")]
    replaced = settle(items, REPLACE)
    assert [item["name"] for item in replaced] == ["a", "ccc", "ccc", "ccc"]  # good[i % 2] at position i
    assert [item["name"] for item in settle(items, DROP)] == ["a", "ccc"]
    none_good = [_item("x", "broken"), _item("y", "broken")]
    assert settle(none_good, REPLACE) == none_good and settle(none_good, DROP) == []
    with pytest.raises(ValueError, match="on_bad='skip' is invalid"):
        settle(items, "skip")


def test_every_user_facing_error_class_lives_in_the_errors_module():
    for name, path in _modules():
        if path == PACKAGE / "errors.py" or "modeling" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        defined = [node.name for node in tree.body if isinstance(node, ast.ClassDef) and node.name.endswith("Error")]
        assert not defined, f"{name} defines {defined}; user-facing errors belong in hf_mim/errors.py"
    for cls in (errors.DatasetError, errors.CheckpointError, errors.ConversionError, errors.RunFolderError):
        assert issubclass(cls, ValueError) and issubclass(cls, errors.USER_ERRORS)
    assert issubclass(errors.TrainingError, errors.USER_ERRORS)


def test_the_version_comes_from_the_package_metadata():
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert hf_mim.__version__ == importlib.import_module("hf_mim.version").__version__ == declared


#: What each floor may import of hf_mim: modeling/ travels as remote code (torch and transformers only), data/ feeds
#: training and evaluation, which the command line and the hub code sit above.
FLOORS = {
    "hf_mim.modeling": ("hf_mim.modeling",),
    "hf_mim.data": ("hf_mim.data", "hf_mim.modeling", "hf_mim.errors", "hf_mim.names"),
}


def test_each_floor_imports_only_what_lies_below_it():
    upward = [
        f"{name} imports {target}"
        for name, path in _modules()
        for floor, allowed in FLOORS.items()
        if name == floor or name.startswith(floor + ".")
        for target, _, _ in _internal_imports(name, path)
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    ]
    assert not upward, upward


def test_the_hub_clients_written_out_tiny_vit_is_the_methods_one():
    from hf_mim.modeling.spec import TINY_VIT

    from .hub_client import TINY

    assert TINY == TINY_VIT
