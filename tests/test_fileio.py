"""Atomic writes: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.fileio import atomic_write, default_cache_dir, write_json


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
