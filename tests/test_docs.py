"""The README and docs/ say what works: every Python block runs, page by page, and every relative link resolves.

A page's blocks run in order in one namespace, in a fresh folder (as a notebook would). A block marked just above
with `<!-- doc-test: {...} -->` may be skipped (`"skip": reason`), run with the texts of `"replace"` swapped for
smaller ones (each must occur in the block, so a stale replacement fails), or prepared for by a `"setup"` below.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DIRECTIVE = re.compile(r"^<!-- doc-test: (\{.*\}) -->$")
KEYS = {"skip", "replace", "setup"}


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    language: str
    code: str
    directive: dict = field(default_factory=dict)


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of `page`, each with the directive on the line just above it (if any)."""
    lines = page.read_text(encoding="utf-8").split("\n")
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language, start = lines[i][3:].strip(), i
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            above = DIRECTIVE.match(lines[start - 1]) if start else None
            directive = json.loads(above.group(1)) if above else {}
            found.append(Block(page, start + 1, language, "\n".join(lines[start + 1 : end]) + "\n", directive))
            i = end
        i += 1
    return found


def _images(folder: Path) -> None:
    """`path/to/images`: an image folder of two classes, 8 small RGB images each."""
    generator = torch.Generator().manual_seed(0)
    for label in ("a", "b"):
        (folder / "path/to/images" / label).mkdir(parents=True)
        for k in range(8):
            pixels = (torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / "path/to/images" / label / f"{k}.png")


def _tokenizer(folder: Path) -> None:
    """`outputs/tokenizer`: a (random) visual tokenizer at BEiT's default geometry, 224 px in 16 px patches."""
    from hf_mim import VisualTokenizer, VisualTokenizerConfig

    config = VisualTokenizerConfig(image_size=224, patch_size=16, vocab_size=16, embedding_dim=8, hidden_channels=8)
    VisualTokenizer(config).save_pretrained(folder / "outputs/tokenizer")


SETUPS = {"images": _images, "tokenizer": _tokenizer}


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


#: The pages with a Python block to run.
PYTHON_PAGES = [
    page for page in PAGES if any(b.language == "python" and "skip" not in b.directive for b in blocks(page))
]


def test_every_page_is_checked_and_every_directive_is_well_formed():
    assert ROOT / "README.md" in PYTHON_PAGES and len(PAGES) > 10
    for page in PAGES:
        for block in blocks(page):
            where = f"{_page_id(page)}:{block.line}"
            assert set(block.directive) <= KEYS, f"{where}: unknown doc-test keys {set(block.directive) - KEYS}"
            if block.directive:
                assert block.language == "python", f"{where}: a doc-test directive above a {block.language} block"
            if "skip" in block.directive:
                assert str(block.directive["skip"]).strip(), f"{where}: a skipped block must say why"
            assert block.directive.get("setup", "images") in SETUPS, f"{where}: no setup {block.directive['setup']}"


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 15_000, "the README is a front page; details go to docs/"
    assert "## Two commands" in readme and "```bash\n.venv/bin/python -m pytest\n```" in readme


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_page_id)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_test__"}
    for block in blocks(page):
        if block.language != "python" or "skip" in block.directive:
            continue
        code = block.code
        for old, new in block.directive.get("replace", {}).items():
            assert old in code, f"{_page_id(page)}:{block.line}: the block no longer holds {old!r}"
            code = code.replace(old, new)
        if "setup" in block.directive:
            SETUPS[block.directive["setup"]](tmp_path)
        exec(compile(code, f"{page}:{block.line}", "exec"), namespace)  # noqa: S102 - our own documentation


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The heading anchors GitHub gives `page`: lower case, punctuation but - and _ dropped, spaces as -."""
    headings = [line.lstrip("#").strip() for block in _prose(page) for line in block if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _prose(page: Path) -> list[list[str]]:
    """The lines of `page` outside fenced blocks, in runs."""
    runs, current, fenced = [], [], False
    for line in page.read_text(encoding="utf-8").split("\n"):
        if line.startswith("```"):
            fenced = not fenced
            runs.append(current)
            current = []
        elif not fenced:
            current.append(line)
    return [*runs, current]


def test_relative_links_and_their_anchors_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall("\n".join(line for run in _prose(page) for line in run)):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{_page_id(page)} -> {target}")
    assert not broken, broken
