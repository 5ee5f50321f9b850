"""Atomic checkpoint saves and safe loads: kills, full disks, truncation, crafted pickles."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lab.checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint, newest_intact
from lab.errors import StorageError


def _ckpt(step: int, fill: float = 1.0) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.full((4,), fill)}}


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(3), tmp_path / "last.ckpt")
    state = io.load_checkpoint(tmp_path / "last.ckpt")
    assert state["global_step"] == 3 and torch.equal(state["state_dict"]["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_full_disk_during_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint(_ckpt(1), target)

    def disk_full(obj, f) -> None:
        f.write(b"\x00" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(StorageError) as caught:
        io.save_checkpoint(_ckpt(2), target)
    assert str(caught.value) == (f"could not save the checkpoint {target}: no space left on the disk under {tmp_path}; "
                                 f"free disk space under {tmp_path}; earlier checkpoints are untouched")
    monkeypatch.undo()
    assert load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_read_only_checkpoint_folder_is_not_blamed_on_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(StorageError) as caught:
        AtomicCheckpointIO().save_checkpoint(_ckpt(1), tmp_path / "best.ckpt")
    msg = str(caught.value)
    assert f"{tmp_path} is read-only" in msg and "space" not in msg and caught.value.errno == errno.EROFS
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": evil}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_truncated_checkpoint_is_reported_and_skipped_for_resume(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save(_ckpt(10), folder / "best.ckpt")
    torch.save(_ckpt(20), folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(folder / "last.ckpt")
    path, skipped = newest_intact(tmp_path)
    assert path.name == "best.ckpt" and len(skipped) == 1 and "last.ckpt" in skipped[0]


def test_newest_intact_prefers_higher_step_and_fails_clearly(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="nothing to resume from"):
        newest_intact(tmp_path)
    torch.save(_ckpt(30), folder / "best.ckpt")
    torch.save(_ckpt(20), folder / "last.ckpt")
    assert newest_intact(tmp_path)[0].name == "best.ckpt"


SAVER = textwrap.dedent("""
    import sys, torch
    from lab.checkpoints import AtomicCheckpointIO
    io, target = AtomicCheckpointIO(), sys.argv[1]
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(4)}}, target)
    print("first saved", flush=True)
    big = {"global_step": 2, "state_dict": {"w": torch.zeros(64 * 2**20)}}   # 256 MiB: a slow write
    while True:
        io.save_checkpoint(big, target)
""")


def test_kill_during_large_save_leaves_previous_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first saved"
        deadline = time.time() + 60
        while not any(p.name.startswith(".last.ckpt.") for p in tmp_path.iterdir()):
            assert time.time() < deadline, "the large save never started"
            time.sleep(0.01)
        time.sleep(0.05)  # let it get part-way into the temp file
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    state = load_checkpoint(target)  # loads: the kill never truncates the checkpoint under its name
    assert state["global_step"] in (1, 2)
    if state["global_step"] == 2:  # the big write may have completed once before the kill
        assert state["state_dict"]["w"].numel() == 64 * 2**20


def test_a_checkpoint_file_alone_is_enough_for_every_command(tiny_gpt_run, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """The checkpoint carries the resolved config and the tokenizer: its run folder is not needed."""
    import shutil

    from lab.cli import main
    from lab.modules import CHECKPOINT_RECORD

    alone = tmp_path / "elsewhere" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copyfile(tiny_gpt_run.checkpoint("best"), alone)
    record = load_checkpoint(alone)[CHECKPOINT_RECORD]
    assert record["config"] == tiny_gpt_run.config and record["config"]["model"]["vocab_size"] > 0
    assert record["tokenizer"] == tiny_gpt_run.tokenizer_path.read_text()
    assert main(["sample", str(alone), "--tokens", "20", "--seed", "3"]) == 0
    alone_text = capsys.readouterr().out
    assert main(["sample", tiny_gpt_run.name, "--runs_dir", str(tiny_gpt_run.path.parent.parent), "--tokens", "20",
                 "--seed", "3"]) == 0
    assert capsys.readouterr().out == alone_text  # the same model, the same decoding
    assert main(["evaluate", str(alone), "--max_batches", "1", "--repeats", "1"]) == 0
    assert main(["export", str(alone), "--format", "safetensors"]) == 0
    assert main(["compress", str(alone), "--method", "int8-dynamic", "--max_batches", "1", "--repeats", "1"]) == 0
    folder = alone.with_name("model.run")
    assert (folder / "reports" / "eval-best.json").is_file() and (folder / "export" / "safetensors").is_dir()
    assert (folder / "compressed" / "int8-dynamic" / "report.json").is_file()
    # A checkpoint without the record (an older lab's) is refused in one line.
    old = torch.load(alone, weights_only=True)
    old.pop(CHECKPOINT_RECORD)
    torch.save(old, tmp_path / "old.ckpt")
    assert main(["evaluate", str(tmp_path / "old.ckpt")]) == 2
    assert "carries no config" in capsys.readouterr().err
