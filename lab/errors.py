"""Errors the lab raises for things a user can fix.

    from lab.errors import ConfigError
    raise ConfigError("optimizer.lr", -1, "a number > 0")
    # -> "optimizer.lr = -1 is invalid: expected a number > 0"

The CLI prints a ``LabError`` as one line (no traceback) and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class LabError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""


class ConfigError(LabError):
    """A config value is invalid; names the dotted field, the value and what is allowed."""

    def __init__(self, field: str, value: Any, expected: str, hint: str = "") -> None:
        self.field, self.value, self.expected = field, value, expected
        msg = f"{field} = {value!r} is invalid: expected {expected}"
        super().__init__(msg + (f". {hint}" if hint else ""))


class DataError(LabError):
    """Data cannot be read or is unusable (missing file, not UTF-8, too short, bad checksum)."""


class StorageError(LabError, OSError):
    """A file could not be written: the disk is full, or the folder is read-only or not writable.

    Made by ``lab.fileio.storage_error`` (the one place that words it). Also an ``OSError``
    carrying the original ``errno``, so code that handles OSError keeps working. ``detail``
    says what failed, where and why; ``advice`` what to do; the message is both, one line.
    """

    def __init__(self, detail: str, advice: str = "", *, code: int | None = None, folder: Path | None = None,
                 path: Path | None = None, what: str = "write") -> None:
        OSError.__init__(self, f"{detail}; {advice}" if advice else detail)
        self.errno, self.detail, self.advice, self.folder, self.path, self.what = code, detail, advice, folder, path, what


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (signal 2) or SIGTERM (15); ``last.ckpt`` was saved first.

    The CLI exits with 128 + signal (130 or 143), as a shell would.
    """

    def __init__(self, signum: int, run_dir: object = None) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum, self.run_dir = signum, run_dir


def require(ok: bool, name: str, value: Any, expected: str, hint: str = "") -> None:
    """Refuse ``value`` of field ``name`` with a ConfigError unless ``ok`` (what every ``validate()`` uses)."""
    if not ok:
        raise ConfigError(name, value, expected, hint)


def require_positive(section: str, obj: Any, *names: str) -> None:
    """Each named field of ``obj`` is a whole number >= 1 (or a non-empty list of them)."""
    for n in names:
        v = getattr(obj, n)
        if isinstance(v, tuple):
            require(len(v) > 0 and all(x >= 1 for x in v), f"{section}.{n}", list(v),
                    "a non-empty list of whole numbers >= 1")
        else:
            require(v >= 1, f"{section}.{n}", v, "a whole number >= 1")
