"""Which process is running a run, and whether it still lives.

    from lab import procs
    ident = procs.identity()      # {"host": ..., "pid": ..., "start": ..., "boot": ..., "pid_ns": ...}
    procs.alive(ident)            # True, False, or None where this process cannot tell

``lab.train.fit`` records its identity in summary.json next to ``status: running``. A run
whose process was killed with SIGKILL, by the out-of-memory killer or by a reboot never gets
to write its end; ``lab.runs.Run.status`` then reads ``crashed`` instead of ``running``
forever. Only a process on the same host (and, on Linux, in the same PID namespace: another
container may reuse the host name) can tell; elsewhere the answer is None, "don't know".
The start time and boot id guard against a later process that got the same pid.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


def identity() -> dict[str, Any]:
    """This process: host name and pid, plus (Linux) its start time, the boot and PID namespace."""
    ident: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if _has_proc():
        ident.update(start=_stat(os.getpid())[1], boot=_boot_id(), pid_ns=_pid_ns())
    return ident


def alive(ident: dict[str, Any] | None) -> bool | None:
    """Whether the process ``ident`` describes still runs; None if it cannot be told from here."""
    if not ident or "pid" not in ident or ident.get("host") != socket.gethostname():
        return None
    pid = int(ident["pid"])
    if not _has_proc():
        return pid_exists(pid)
    if ident.get("pid_ns") != _pid_ns():
        return None  # another container with the same host name: its pids are not ours
    if ident.get("boot") not in (None, _boot_id()):
        return False  # the machine restarted since
    try:
        state, start = _stat(pid)
    except OSError:
        return False
    # A zombie has exited (its parent has not reaped it yet); another start time is another process.
    return state != "Z" and (ident.get("start") is None or start == ident["start"])


def pid_exists(pid: int) -> bool | None:
    """Whether ``pid`` exists, by the signal-0 probe; None off POSIX (where os.kill would kill it)."""
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def _has_proc() -> bool:
    return (_PROC / "self" / "stat").exists()


def _stat(pid: int) -> tuple[str, int]:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat."""
    text = (_PROC / str(pid) / "stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None


def _pid_ns() -> str | None:
    try:
        return os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return None
