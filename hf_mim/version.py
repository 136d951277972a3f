"""The installed version of hf_mim, from the package metadata (pyproject.toml's `version`, in one place)."""

from importlib import metadata

try:
    __version__ = metadata.version("hf_mim")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
