"""Which process is running a run, and whether it still lives.

    from lab import procs
    ident = procs.identity()      # {"host", "pid"} + on Linux {"machine", "boot", "pid_ns", "start"}
    procs.alive(ident)            # True, False, or None where this process cannot tell

``lab.train.fit`` records its identity in summary.json next to ``status: running``. A run
whose process was killed with SIGKILL, by the out-of-memory killer or by a reboot never gets
to write its end; ``lab.runs.Run.status`` then reads ``crashed`` instead of ``running``
forever. Only a process on the same machine (same host name and, on Linux, same machine id
and PID namespace: cloned VMs and containers may share a host name) can tell; elsewhere, or
where /proc hides the process, the answer is None, "don't know", never a false "dead". The
start time and boot id guard against a later process that got the same pid.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"
"""A random id per boot of each machine."""
_MACHINE_ID = Path("/etc/machine-id")


def identity() -> dict[str, Any]:
    """This process: host name and pid, plus (Linux) machine id, boot id, PID namespace, start time."""
    ident: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if _has_proc():
        try:
            linux = {"machine": _read(_MACHINE_ID), "boot": _read(_BOOT_ID), "pid_ns": _pid_ns(),
                     "start": _stat("self")[1]}
        except (OSError, ValueError, IndexError):
            return ident  # an odd /proc (another namespace's): the pid alone, judged by no one
        ident.update(linux)
    return ident


def alive(ident: dict[str, Any] | None) -> bool | None:
    """Whether the process ``ident`` describes still runs; None if it cannot be told from here."""
    if not ident or "pid" not in ident or ident.get("host") != socket.gethostname():
        return None
    pid = int(ident["pid"])
    if not _has_proc():
        # A record made on Linux names a machine this one cannot check (a shared drive).
        return None if "start" in ident else pid_exists(pid)
    if "start" not in ident or ident.get("pid_ns") != _pid_ns():
        return None  # another container (its pids are not ours), or an identity without the checks
    boot = _read(_BOOT_ID)
    if boot is None or ident.get("boot") != boot:
        # Restarted since, or another machine with the same host name (cloned VMs on a shared
        # runs folder): only a matching machine id says which.
        machine = _read(_MACHINE_ID)
        return False if machine is not None and ident.get("machine") == machine else None
    try:
        state, start = _stat(pid)
    except FileNotFoundError:
        # Gone, or hidden by /proc's hidepid: the signal probe tells (another user's: "exists").
        return None if pid_exists(pid) else False
    except (OSError, ValueError, IndexError):
        return None
    # A zombie has exited (its parent has not reaped it yet); another start time is another process.
    return state != "Z" and start == ident["start"]


def describe(ident: dict[str, Any] | None) -> str:
    """``pid 123 on host``, for messages."""
    ident = ident or {}
    return f"pid {ident.get('pid')} on {ident.get('host')}"


def pid_exists(pid: int, own: bool = False) -> bool | None:
    """Whether ``pid`` exists, by the signal-0 probe; None off POSIX (where os.kill would kill it).

    ``own``: count only this user's processes (a job runner is always ours: another user's
    process holding the pid means the runner is gone and the pid was reused).
    """
    if os.name != "posix":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return not own  # someone else's process, alive
    return True


def _has_proc() -> bool:
    return (_PROC / "self" / "stat").exists()


def _stat(pid: int | str) -> tuple[str, int]:
    """(state, start time in clock ticks since boot) from /proc/<pid>/stat (pid may be ``self``)."""
    text = (_PROC / str(pid) / "stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[19])


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _pid_ns() -> str | None:
    try:
        return os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        return None
