"""Errors the lab raises for things a user can fix.

    from lab.errors import ConfigError
    raise ConfigError("optimizer.lr", -1, "a number > 0")
    # -> "optimizer.lr = -1 is invalid: expected a number > 0"

The CLI prints a ``LabError`` as one line (no traceback) and exits with code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

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


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (signal 2) or SIGTERM (15); ``last.ckpt`` was saved first.

    The CLI exits with 128 + signal (130 or 143), as a shell would.
    """

    def __init__(self, signum: int, run_dir: object = None) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum, self.run_dir = signum, run_dir
