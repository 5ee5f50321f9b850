"""Which process is running a run, and whether it still lives -- on Linux, macOS and Windows.

    from lab import procs
    ident = procs.identity()      # {"host", "pid", "created", "booted"} (+ "machine", "pid_ns" where known)
    procs.alive(ident)            # True, False, or None where this process cannot tell
    procs.cmdline(pid)            # a process's command line (job runners check it names their job)

``lab.train.fit`` records its identity in summary.json next to ``status: running``. A run
whose process was killed with SIGKILL, by the out-of-memory killer or by a reboot never gets
to write its end; ``lab.runs.Run.status`` then reads ``crashed`` instead of ``running``
forever. The facts come from ``psutil`` (process creation time, boot time, existence), so the
same code judges a run on a workshop laptop of any OS. Only a process on the same machine can
tell (same host name, same boot; and where the OS says so, same machine id and PID namespace:
cloned VMs and containers may share a host name); elsewhere, or where the OS hides the
process, the answer is None, "don't know", never a false "dead". The creation time guards
against a later process that got the same pid.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import psutil

BOOT_TOLERANCE_S = 2.0
"""Boot times read by two processes may differ by clock adjustments (NTP) of a second or so."""
CREATED_TOLERANCE_S = 0.05
"""Creation times are kept in clock ticks (10 ms on Linux): equal within this, or another process."""


def identity() -> dict[str, Any]:
    """This process: host name, pid, creation and boot time; machine id and PID namespace where the OS has them."""
    me = psutil.Process()
    ident: dict[str, Any] = {"host": socket.gethostname(), "pid": me.pid, "created": me.create_time(),
                             "booted": psutil.boot_time()}
    ident.update({k: v for k, v in (("machine", _machine_id()), ("pid_ns", _pid_namespace())) if v is not None})
    return ident


def alive(ident: dict[str, Any] | None) -> bool | None:
    """Whether the process ``ident`` describes still runs; None if it cannot be told from here."""
    if not ident or "pid" not in ident or ident.get("host") != socket.gethostname():
        return None
    if "created" not in ident or "booted" not in ident:
        return None  # an identity from an older lab, without the checks: no verdict
    if ident.get("pid_ns") != _pid_namespace():
        return None  # another container (its pids are not ours)
    if abs(float(ident["booted"]) - psutil.boot_time()) > BOOT_TOLERANCE_S:
        # Restarted since, or another machine with the same host name (cloned VMs on a shared
        # runs folder): only a matching machine id says which.
        machine = _machine_id()
        return False if machine is not None and ident.get("machine") == machine else None
    try:
        proc = psutil.Process(int(ident["pid"]))
        # A zombie has exited (its parent has not reaped it yet); another creation time is another process.
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - float(ident["created"])) <= CREATED_TOLERANCE_S
    except psutil.ZombieProcess:
        return False
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, OSError):
        return None  # hidden from us (another user's, /proc's hidepid): alive or not, we cannot tell


def describe(ident: dict[str, Any] | None) -> str:
    """``pid 123 on host``, for messages."""
    ident = ident or {}
    return f"pid {ident.get('pid')} on {ident.get('host')}"


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists now (any user's; psutil asks the OS)."""
    return psutil.pid_exists(pid)


def cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid``; None if it is gone, a zombie, or hidden from us."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.cmdline()
    except (psutil.Error, OSError):
        return None


def _machine_id() -> str | None:
    """systemd's machine id (Linux); other systems have none we can read without privileges."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return None


def _pid_namespace() -> str | None:
    """Linux's PID namespace of this process (containers have their own); None on other systems."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
