"""Process identities: a run's process is alive, gone (exited, killed, zombie, rebooted) or unknown."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from lab import procs


def test_this_process_is_alive() -> None:
    ident = procs.identity()
    assert ident["pid"] == os.getpid() and procs.alive(ident) is True
    assert ident["created"] == pytest.approx(psutil.Process().create_time())


def test_killed_process_is_gone_even_before_it_is_reaped(other_process) -> None:
    child, ident = other_process
    assert ident["pid"] == child.pid and procs.alive(ident) is True
    assert procs.cmdline(child.pid) is not None
    child.send_signal(signal.SIGKILL)
    deadline = time.time() + 10
    while procs.alive(ident) and time.time() < deadline:  # a zombie until wait() below
        time.sleep(0.05)
    assert procs.alive(ident) is False and procs.cmdline(child.pid) is None
    child.wait()
    assert procs.alive(ident) is False and procs.pid_exists(child.pid) is False


def test_a_reused_pid_or_a_reboot_is_not_the_recorded_process() -> None:
    ident = procs.identity()
    assert procs.alive({**ident, "created": ident["created"] + 1}) is False  # same pid, later process
    rebooted = {**ident, "booted": ident["booted"] - 3600}
    assert procs.alive(rebooted) is (False if ident.get("machine") else None)
    # Same host name, another machine (cloned VMs sharing a runs folder): not ours to judge.
    assert procs.alive({**rebooted, "machine": "another-machine"}) is None
    assert procs.alive({k: v for k, v in ident.items() if k != "created"}) is None  # no creation time: no verdict


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PID namespaces are Linux's")
def test_another_pid_namespace_cannot_be_judged() -> None:
    ident = procs.identity()
    assert ident["pid_ns"].startswith("pid:[")
    assert procs.alive({**ident, "pid_ns": "pid:[1]"}) is None


def test_a_process_hidden_by_the_os_is_not_called_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    ident = procs.identity()

    def denied(pid: int) -> None:
        raise psutil.AccessDenied(pid)  # another user's process on macOS, or /proc's hidepid on Linux

    monkeypatch.setattr(procs.psutil, "Process", denied)
    assert procs.alive(ident) is None and procs.cmdline(ident["pid"]) is None


def test_unknown_where_this_process_cannot_tell() -> None:
    ident = procs.identity()
    assert procs.alive({**ident, "host": ident["host"] + "-elsewhere"}) is None
    assert procs.alive(None) is None and procs.alive({}) is None
    # A record from an older lab (start ticks and a boot id, no creation time): no verdict.
    assert procs.alive({"host": ident["host"], "pid": ident["pid"], "start": 123, "boot": "x"}) is None

