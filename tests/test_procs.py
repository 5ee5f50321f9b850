"""Process identities: a run's process is alive, gone (exited, killed, zombie, rebooted) or unknown."""

from __future__ import annotations

import os
import signal
import time

import pytest

from lab import procs

def test_this_process_is_alive() -> None:
    ident = procs.identity()
    assert ident["pid"] == os.getpid() and procs.alive(ident) is True


def test_killed_process_is_gone_even_before_it_is_reaped(other_process) -> None:
    child, ident = other_process
    assert ident["pid"] == child.pid and procs.alive(ident) is True
    child.send_signal(signal.SIGKILL)
    deadline = time.time() + 10
    while procs.alive(ident) and time.time() < deadline:  # a zombie until wait() below
        time.sleep(0.05)
    assert procs.alive(ident) is False
    child.wait()
    assert procs.alive(ident) is False and procs.pid_exists(child.pid) is False


@pytest.mark.skipif(not procs._has_proc(), reason="start times and boot ids come from Linux's /proc")
def test_a_reused_pid_or_a_reboot_is_not_the_recorded_process() -> None:
    ident = procs.identity()
    assert procs.alive({**ident, "start": ident["start"] + 1}) is False  # same pid, later process
    assert procs.alive({**ident, "boot": "another-boot"}) is (False if ident["machine"] else None)  # rebooted
    # Same host name, another machine (cloned VMs sharing a runs folder): not ours to judge.
    assert procs.alive({**ident, "boot": "another-boot", "machine": "another-machine"}) is None
    assert procs.alive({**ident, "pid_ns": "pid:[1]"}) is None  # another container: cannot tell
    assert procs.alive({k: v for k, v in ident.items() if k != "start"}) is None  # no start time: no verdict


def test_a_process_hidden_by_proc_is_not_called_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    ident = procs.identity()
    # /proc mounted with hidepid=2 hides another user's processes: no stat file, yet it lives.
    monkeypatch.setattr(procs, "_stat", lambda pid: (_ for _ in ()).throw(FileNotFoundError(pid)))
    assert procs.alive(ident) is None
    monkeypatch.setattr(procs, "_stat", lambda pid: (_ for _ in ()).throw(PermissionError(pid)))  # hidepid=1
    assert procs.alive(ident) is None
    monkeypatch.setattr(procs, "pid_exists", lambda pid: False)
    monkeypatch.setattr(procs, "_stat", lambda pid: (_ for _ in ()).throw(FileNotFoundError(pid)))
    assert procs.alive(ident) is False


def test_pid_probe_counts_another_users_process_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs.os, "kill", lambda pid, sig: (_ for _ in ()).throw(PermissionError(pid)))
    assert procs.pid_exists(12345) is True and procs.pid_exists(12345, own=True) is False


def test_unknown_where_this_process_cannot_tell() -> None:
    ident = procs.identity()
    assert procs.alive({**ident, "host": ident["host"] + "-elsewhere"}) is None
    assert procs.alive(None) is None and procs.alive({}) is None
