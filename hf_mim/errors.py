"""Every error hf_mim raises for something its user can fix, with a message meant to be shown as is.

They derive from the builtin a caller would catch anyway (`ValueError` for a bad value, file or folder,
`RuntimeError` for a run that cannot go on), so `except ValueError` keeps working. The command line catches
`USER_ERRORS` and prints one line on stderr with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset problem found before training: a path that does not exist, a missing column or split, an empty or
    unreadable dataset."""


class CheckpointError(ValueError):
    """A checkpoint hf_mim will not load: pickle-only weights, an unreadable file, weights that do not cover the
    model its config.json describes."""


class ConversionError(ValueError):
    """A checkpoint of another library that cannot be converted into (or exported from) an hf_mim model."""


class RunFolderError(ValueError):
    """An output folder a run cannot use: another run's, a file, not writable, or holding files hf_mim did not
    write."""


class TrainingError(RuntimeError):
    """A run that cannot go on: nothing decoded, the loss is not finite, the processes disagree, a checkpoint
    cannot be written."""


def one_line(err: BaseException) -> str:
    """An error's first line: what `hf-mim` prints for an error a user can fix, and how records quote a cause."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


#: What the command line reports in one line (exit status 2): the errors above, any other `ValueError` (a bad flag
#: value), and `OSError` (a missing file, a read-only folder, a full disk).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, TrainingError)

__all__ = [
    "CheckpointError",
    "ConversionError",
    "DatasetError",
    "RunFolderError",
    "TrainingError",
    "USER_ERRORS",
    "one_line",
]
