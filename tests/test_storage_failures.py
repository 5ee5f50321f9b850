"""A full disk or a read-only runs folder ends every command in one line, with advice that holds.

Driven through ``lab.cli.main`` in-process. This machine and CI run as root, for whom chmod
stops nothing, so the failures are simulated where the bytes go: ``torch.save`` and
``os.fsync`` raise ENOSPC (a disk that fills mid-run), and the calls that create files or
folders under the runs root raise EROFS (a read-only mount). Each test asserts exit code
2, exactly one ``error:`` line naming the folder and the cause, no traceback, what
summary.json says (for fit), and that nothing was left behind. One more test does it for
real on a tmpfs mount where mounting is possible (root with CAP_SYS_ADMIN), else skips.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from lab import runs
from lab.checkpoints import load_checkpoint, newest_intact
from lab.cli import main

TINY = ["--config", "seed-mlp", "--trainer.max_steps", "20", "--trainer.val_check_interval", "10"]


def lab(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str]:
    """Run ``lab *argv`` in-process: (exit code, the one ``error:`` line, without ``error: ``)."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    return rc, lines[0].removeprefix("error: ")


def snapshot(root: Path, dirs: bool = True) -> dict[str, Any]:
    """Every path under ``root`` with its content (files) and modification time (folders too)."""
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.read_bytes())
        elif dirs:
            out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out


def no_temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".part") or ".tmp-" in p.name]


def fill_disk_at_save(monkeypatch: pytest.MonkeyPatch, from_save: int, small_writes_fail: int = 0) -> None:
    """From the ``from_save``-th checkpoint save on, the disk is full: torch.save writes a little, then ENOSPC.

    ``small_writes_fail``: how many of the atomic writes after the first failed save fail too
    (summary.json); 0 is a checkpoint too big for the space left, a large number a disk
    with no byte left.
    """
    real_save, real_fsync = torch.save, os.fsync
    state = {"saves": 0, "full": False, "small": small_writes_fail}

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        state["saves"] += 1
        if state["saves"] >= from_save:
            state["full"] = True
            f.write(b"\0" * 512)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    def fsync(fd: int) -> None:
        if state["full"] and state["small"] > 0:
            state["small"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "fsync", fsync)


def read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Everything under ``root`` behaves like a read-only mount: creating, replacing or opening to write is EROFS."""
    top = os.path.abspath(root)

    def under(p: Any) -> bool:
        return isinstance(p, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(p)).startswith(top)

    def refuse(p: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(p))

    real = {"mkstemp": tempfile.mkstemp, "mkdtemp": tempfile.mkdtemp, "mkdir": os.mkdir, "replace": os.replace,
            "rename": os.rename, "open": builtins.open, "os_open": os.open}

    def mkstemp(suffix: Any = None, prefix: Any = None, dir: Any = None, text: bool = False) -> Any:
        return refuse(dir) if under(dir) else real["mkstemp"](suffix, prefix, dir, text)

    def mkdtemp(suffix: Any = None, prefix: Any = None, dir: Any = None) -> Any:
        return refuse(dir) if under(dir) else real["mkdtemp"](suffix, prefix, dir)

    def writing_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if under(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real["open"](file, mode, *args, **kwargs)

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> Any:
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real["os_open"](path, flags, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: refuse(p) if under(p) else real["mkdir"](p, *a, **k))
    monkeypatch.setattr(os, "replace", lambda s, d, *a, **k: refuse(d) if under(d) else real["replace"](s, d, *a, **k))
    monkeypatch.setattr(os, "rename", lambda s, d, *a, **k: refuse(d) if under(d) else real["rename"](s, d, *a, **k))
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", writing_open)
    monkeypatch.setattr(io, "open", writing_open)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> runs.Run:
    """A finished seed-mlp run (20 steps) in its own runs folder."""
    from lab.config import load_config
    from lab.train import fit

    return fit(load_config("seed-mlp", {"trainer.max_steps": 20, "trainer.val_check_interval": 10}),
               runs_root=tmp_path_factory.mktemp("runs"), progress=False)


# --------------------------------------------------------------------------- a disk that fills during fit


def test_full_disk_mid_run_marks_failed_and_the_advised_resume_works(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fill_disk_at_save(monkeypatch, from_save=3)  # last.ckpt at steps 2 and 4 fit; step 6 does not
    rc, line = lab(capsys, "fit", *TINY, "--trainer.checkpoint_every_n_steps", "2", "--runs_dir", tmp_path)
    (run,) = runs.list_runs(tmp_path)
    assert rc == 2
    assert f"could not save the checkpoint {run.checkpoints_dir}" in line
    assert f"no space left on the disk under {run.checkpoints_dir}" in line
    assert "the run is marked failed" in line and f"then `lab fit --resume {run.name}` continues it from last.ckpt" in line
    assert run.summary["status"] == "failed" and run.summary["error"] == line  # not left "running" (crashed)
    assert no_temp_files(tmp_path) == []  # the half-written checkpoint is gone
    path, _ = newest_intact(run.path)
    assert load_checkpoint(path)["global_step"] == 4

    monkeypatch.undo()  # space freed: the advice works
    assert main(["fit", "--resume", run.name, "--runs_dir", str(tmp_path)]) == 0
    assert runs.load_run(run.path).summary["status"] == "completed"


@pytest.mark.parametrize("small_writes_fail", [1, 99], ids=["summary-fits-on-retry", "no-byte-left"])
def test_full_disk_before_any_checkpoint_never_advises_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              small_writes_fail: int) -> None:
    fill_disk_at_save(monkeypatch, from_save=1, small_writes_fail=small_writes_fail)
    rc, line = lab(capsys, "fit", *TINY, "--runs_dir", tmp_path)
    monkeypatch.undo()
    (run,) = runs.list_runs(tmp_path)
    assert rc == 2 and f"no space left on the disk under {run.path}" in line
    assert "resume" not in line and "it has no checkpoint yet: free disk space under" in line
    assert line.endswith("and start the run again")
    if small_writes_fail == 1:  # the first summary write failed too; the retry got through
        assert run.summary["status"] == "failed" and run.summary["error"] == line
        assert "the run is marked failed" in line
    else:  # summary.json stays the last whole version, and the line says what `lab runs` will show
        assert run.summary["status"] == "running"
        assert f"summary.json could not be updated either, so `lab runs` will show {run.name} as crashed" in line
    assert no_temp_files(tmp_path) == []


# --------------------------------------------------------------------------- a read-only runs folder


def test_fit_into_read_only_runs_folder_names_it_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "runs"
    (root / "seed-mlp").mkdir(parents=True)
    before = snapshot(tmp_path)
    read_only(monkeypatch, tmp_path)
    rc, line = lab(capsys, "fit", *TINY, "--runs_dir", root)
    monkeypatch.undo()
    assert rc == 2
    assert line == (f"could not write to {root}: it is read-only (read-only file system); "
                    "choose a writable runs folder with --runs_dir or $LAB_RUNS_DIR")
    assert snapshot(tmp_path) == before


def test_new_runs_folder_under_a_read_only_one_names_the_read_only_folder(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    read_only(monkeypatch, tmp_path)
    rc, line = lab(capsys, "fit", *TINY, "--runs_dir", tmp_path / "new" / "runs")
    monkeypatch.undo()
    assert rc == 2 and f"{tmp_path} is read-only" in line and "space" not in line
    assert list(tmp_path.iterdir()) == []


def test_resume_in_a_read_only_folder_says_so_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lab.config import load_config
    from lab.errors import RunInterrupted
    from lab.train import fit

    stop = threading.Event()

    class StopAtStep3(L.Callback):  # as a notebook's Stop button would: last.ckpt saved, run interrupted
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 3:
                stop.set()

    with pytest.raises(RunInterrupted):
        fit(load_config("seed-mlp", {"trainer.max_steps": 20}), runs_root=tmp_path, progress=False,
            callbacks=[StopAtStep3()], stop=stop)
    (run,) = runs.list_runs(tmp_path)
    assert run.status == "interrupted"
    before = snapshot(tmp_path)
    read_only(monkeypatch, tmp_path)
    rc, line = lab(capsys, "fit", "--resume", run.name, "--runs_dir", tmp_path)
    monkeypatch.undo()
    assert rc == 2 and line == (f"could not write to {run.path}: it is read-only (read-only file system); nothing was "
                                f"changed; make {run.path} writable, or copy {run.name} into a writable runs folder "
                                "and use that one (--runs_dir or $LAB_RUNS_DIR)")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", [
    ["evaluate", "{run}", "--repeats", "1"],
    ["compress", "{run}", "--method", "int8-dynamic", "--repeats", "1"],
    ["compress", "{run}", "--method", "all", "--repeats", "1"],
    ["export", "{run}", "--format", "safetensors"],
    ["export", "{run}", "--format", "onnx"],
], ids=lambda c: "-".join(c[:1] + c[3:4]))
def test_commands_on_a_run_in_a_read_only_folder_say_so_and_change_nothing(
        trained: runs.Run, command: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = trained.path.parent.parent
    before = snapshot(root)
    read_only(monkeypatch, root)
    rc, line = lab(capsys, *[c.replace("{run}", trained.name) for c in command], "--runs_dir", root)
    monkeypatch.undo()
    assert rc == 2
    assert f"{trained.path} is read-only" in line or f"{trained.path}: it is read-only" in line
    assert "space" not in line  # never blamed on free space
    assert f"make {trained.path} writable, or copy {trained.name} into a writable runs folder" in line
    assert snapshot(root) == before
    assert runs.load_run(trained.path).summary["status"] == "completed"


def test_export_to_a_read_only_out_folder_says_choose_another(trained: runs.Run, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    read_only(monkeypatch, tmp_path)
    rc, line = lab(capsys, "export", trained.name, "--format", "safetensors", "--out", tmp_path / "model",
                   "--runs_dir", trained.path.parent.parent)
    monkeypatch.undo()
    assert rc == 2 and line == (f"could not write to {tmp_path}: it is read-only (read-only file system); "
                                "choose a writable --out folder")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a disk that is full after measuring


@pytest.mark.parametrize("command", [
    ["evaluate", "{run}", "--repeats", "1", "--ckpt", "last"],
    ["compress", "{run}", "--method", "int8-dynamic", "--repeats", "1", "--ckpt", "last"],
    ["export", "{run}", "--format", "safetensors", "--ckpt", "last"],
], ids=lambda c: c[0])
def test_full_disk_when_writing_results_is_one_line_and_leaves_no_files(
        trained: runs.Run, command: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = trained.path.parent.parent
    before = snapshot(root, dirs=False)

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)  # every file the lab writes is fsynced before it is renamed
    rc, line = lab(capsys, *[c.replace("{run}", trained.name) for c in command], "--runs_dir", root)
    monkeypatch.undo()
    assert rc == 2 and "no space left on the disk under" in line and str(trained.path) in line
    assert "free disk space under" in line and "read-only" not in line
    assert snapshot(root, dirs=False) == before  # no report, artifact or temp file left
    assert no_temp_files(root) == []


# --------------------------------------------------------------------------- for real, where a tmpfs can be mounted


@pytest.fixture
def tmpfs(tmp_path: Path) -> Any:
    """A 24 MiB tmpfs at ``tmp_path/mnt``; skips where mounting is not allowed (not root, no CAP_SYS_ADMIN)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


FILL_AND_FIT = textwrap.dedent("""
    import sys, lightning as L
    from lab import cli, train

    class FillDisk(L.Callback):  # at step 5 something else fills the disk, leaving 16 KiB
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 4:
                with open(sys.argv[1], "wb") as f:
                    try:
                        while True:
                            f.write(bytes(1 << 16)); f.flush()
                    except OSError:
                        pass
                    f.truncate(max(0, f.tell() - (16 << 10)))

    build = train.build_trainer
    train.build_trainer = lambda cfg, run, callbacks=(), **kw: build(cfg, run, [*callbacks, FillDisk()], **kw)
    sys.exit(cli.main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_real_full_disk_and_read_only_mount(tmpfs: Path) -> None:
    def lab_process(*argv: Any, script: str | None = None) -> tuple[int, str]:
        cmd = [sys.executable, "-c", script, *map(str, argv)] if script else [sys.executable, "-m", "lab.cli", *map(str, argv)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert "Traceback" not in done.stderr and "Exception in thread" not in done.stderr, done.stderr[-3000:]
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, done.stderr[-3000:]
        return done.returncode, lines[0]

    root, filler = tmpfs / "runs", tmpfs / "filler"
    rc, line = lab_process(filler, "fit", *TINY, "--trainer.checkpoint_every_n_steps", "2", "--runs_dir", root,
                           script=FILL_AND_FIT)
    (run,) = runs.list_runs(root)
    assert rc == 2 and "no space left on the disk" in line and f"`lab fit --resume {run.name}`" in line
    assert run.summary["status"] == "failed" and no_temp_files(root) == []
    filler.unlink()

    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    before = snapshot(root)
    for argv in (["fit", *TINY], ["fit", "--resume", run.name], ["evaluate", run.name, "--ckpt", "last"],
                 ["compress", run.name, "--method", "int8-dynamic", "--ckpt", "last"],
                 ["export", run.name, "--format", "onnx", "--ckpt", "last"]):
        rc, line = lab_process(*argv, "--runs_dir", root)
        assert rc == 2 and "read-only" in line and "space" not in line, line
    assert snapshot(root) == before
    assert json.loads((run.path / runs.SUMMARY).read_text())["status"] == "failed"
