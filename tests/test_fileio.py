"""Atomic writes: readers see the old file or the new one, never half of one; a full disk or
read-only folder is one StorageError line naming the folder."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest

from lab.errors import LabError, StorageError
from lab.fileio import (atomic_write, check_writable, default_cache_dir, quiet_tensorboard_writer_errors, storage_cause,
                        storage_errors, write_json)


def test_write_json_keeps_old_file_when_serialising_fails(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    write_json(target, {"a": 1})

    class Boom:
        def __str__(self) -> str:
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        write_json(target, {"a": Boom()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_failed_write_removes_temp_and_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "tokens.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def half_then_crash(f) -> None:
        f.write(b"new but incomp")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.bin"]


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LAB_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "large-model-lab"


# --------------------------------------------------------------------------- full disks, read-only folders


def _raise(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


def test_full_disk_is_one_storage_error_naming_the_folder_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "run" / "summary.json"
    write_json(target, {"status": "running"})

    def disk_full(f) -> None:
        f.write(b"{half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError) as caught:
        atomic_write(target, disk_full)
    e = caught.value
    assert isinstance(e, LabError) and isinstance(e, OSError) and e.errno == errno.ENOSPC
    msg = str(e)
    assert "\n" not in msg and f"no space left on the disk under {tmp_path / 'run'}" in msg
    assert "free disk space" in msg and "read-only" not in msg
    assert json.loads(target.read_text()) == {"status": "running"}  # the old file, whole
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]  # no temp file left


def test_failed_write_into_new_folders_removes_the_folders_it_made(tmp_path: Path) -> None:
    def disk_full(f) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError):
        atomic_write(tmp_path / "reports" / "deep" / "eval.json", disk_full)
    assert list(tmp_path.iterdir()) == []


def test_torch_style_runtime_error_over_enospc_is_found(tmp_path: Path) -> None:
    # torch.save reports a full disk as a RuntimeError raised while handling the OSError.
    def torch_like(f) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    with pytest.raises(StorageError, match="no space left on the disk"):
        atomic_write(tmp_path / "x.ckpt", torch_like)
    assert storage_cause(RuntimeError("plain")) is None
    assert storage_cause(FileNotFoundError(errno.ENOENT, "missing")) is None  # not a storage failure: a bug or bad path


@pytest.mark.parametrize("code, words", [(errno.EROFS, "is read-only"), (errno.EACCES, "permission denied"),
                                         (errno.EPERM, "operation not permitted")])
def test_unwritable_folder_is_not_blamed_on_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       code: int, words: str) -> None:
    target = tmp_path / "summary.json"
    write_json(target, {"a": 1})
    monkeypatch.setattr(os, "replace", _raise(code))
    with pytest.raises(StorageError) as caught:
        write_json(target, {"a": 2})
    msg = str(caught.value)
    assert words in msg and str(tmp_path) in msg and "space" not in msg
    assert caught.value.errno == code
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_other_os_errors_are_not_turned_into_storage_errors(tmp_path: Path) -> None:
    def bad(f) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "x", bad)
    assert not isinstance(caught.value, StorageError) and caught.value.errno == errno.EIO


def test_check_writable_refuses_a_read_only_folder_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "mkstemp", _raise(errno.EROFS))
    with pytest.raises(StorageError) as caught:
        check_writable(tmp_path / "runs" / "new", if_read_only="choose a writable runs folder")
    msg = str(caught.value)
    assert msg == (f"could not write to {tmp_path / 'runs' / 'new'}: {tmp_path} is read-only (read-only file system); "
                   "choose a writable runs folder")
    monkeypatch.undo()
    check_writable(tmp_path / "runs" / "new")  # a writable folder passes, and the probe leaves nothing
    assert list(tmp_path.iterdir()) == []


def test_storage_errors_rewords_with_the_callers_advice(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        with storage_errors(tmp_path, target=tmp_path / "export", if_full="free space, then export again"):
            raise OSError(errno.ENOSPC, "No space left on device")  # e.g. from safetensors, no file name
    assert str(caught.value) == (f"could not write {tmp_path / 'export'}: no space left on the disk under {tmp_path}; "
                                 "free space, then export again")
    with pytest.raises(ValueError):  # anything else passes through untouched
        with storage_errors(tmp_path):
            raise ValueError("a bug")


def test_tensorboard_writer_thread_full_disk_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # TensorBoard's writer thread keeps the error and re-raises it in the logging thread
    # (which the lab turns into one line); printed from the thread too it is a traceback.
    printed: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(type(args.thread).__name__))
    quiet_tensorboard_writer_errors()
    quiet_tensorboard_writer_errors()  # idempotent: installed once

    class _AsyncWriterThread(threading.Thread):  # the name of tensorboard's writer thread class
        def __init__(self, code: int) -> None:
            super().__init__()
            self.code = code

        def run(self) -> None:
            raise OSError(self.code, os.strerror(self.code))

    class Other(_AsyncWriterThread):
        pass

    for t in (_AsyncWriterThread(errno.ENOSPC), _AsyncWriterThread(errno.EIO), Other(errno.ENOSPC)):
        t.start()
        t.join()
    assert printed == ["_AsyncWriterThread", "Other"]  # an EIO, and other threads, still report
