"""Names a user hands hf_mim: Hub repo ids, paths inside a repository, and local paths.

Each check refuses what could address something outside the place it names (`..`, absolute paths, drive letters),
and records never show a local path: a pushed card would show the uploader's folders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def _unsafe(text) -> str | None:
    """Why `text` could address something outside a repository (or is no name at all); None when it cannot."""
    if not isinstance(text, str) or not text:
        return "it is empty or not a string"
    if "\\" in text or text.startswith("//"):
        return "it is a UNC or Windows path"
    if re.match(r"^[A-Za-z]:", text):
        return "it starts with a drive letter"
    if text.startswith(("/", "~")):
        return "it is an absolute path"
    if "\x00" in text:
        return "it contains a NUL byte"
    return None


def check_repo_id(repo_id, field: str = "repo_id") -> str:
    """A Hub repo id, "name" or "namespace/name"; raises ValueError for anything that could address a path:
    `..`, absolute paths, drive letters, UNC or backslash paths, empty parts, or characters the Hub rejects."""
    problem = _unsafe(repo_id)
    if problem is None and ".." in repo_id:
        problem = "it contains '..'"
    elif problem is None and (
        repo_id.count("/") > 1 or not all(_REPO_PART.fullmatch(part) for part in repo_id.split("/"))
    ):
        problem = "it is not 'name' or 'namespace/name' of letters, digits, '-', '_' and '.' (at most 96 each)"
    elif problem is None and (repo_id.endswith((".git", ".")) or "--" in repo_id):
        problem = "it ends in '.git' or '.', or contains '--'"
    if problem:
        raise ValueError(f"{field}={repo_id!r} is invalid: {problem}; allowed: 'name' or 'namespace/name'")
    return repo_id


def check_path_in_repo(path, field: str = "path_in_repo") -> str:
    """A relative POSIX path inside a repository; raises ValueError for `..` parts, absolute paths, drive letters,
    UNC or backslash paths and empty parts."""
    problem = _unsafe(path)
    if problem is None and any(part in ("", ".", "..") for part in path.split("/")):
        problem = "it has an empty, '.' or '..' part"
    if problem:
        raise ValueError(f"{field}={path!r} is invalid: {problem}; allowed: a relative path like 'dir/file.json'")
    return path


def looks_like_path(name: str) -> bool:
    # A Hub id has at most one "/"; anything else path-like is a local path that does not exist.
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or any(c in name for c in "*?[")  # a glob of data files
    )


def shown_name(name: str) -> str:
    """How records, logs of the run and model cards name a local dataset: its folder's or file's name, never the
    path (a pushed card would show the uploader's folders); a glob keeps its pattern after the folder's name."""
    path = os.path.abspath(os.path.expanduser(name))
    if any(c in os.path.basename(path) for c in "*?["):
        return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
    return os.path.basename(path.rstrip(os.sep)) or name


def hub_id_of(src: str | os.PathLike) -> str | None:
    """`src` when it names a Hub model rather than a local path (for a card's `base_model`), else None."""
    text = str(src)
    if Path(os.path.expanduser(text)).exists() or looks_like_path(text):
        return None
    try:
        return check_repo_id(text, "checkpoint")
    except ValueError:
        return None


__all__ = ["check_path_in_repo", "check_repo_id", "hub_id_of", "looks_like_path", "shown_name"]
