"""The runs folder layout, atomic summaries, listing, resolving and reading scalars."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from lab import runs
from lab.errors import LabError


def test_create_run_writes_config_and_summary(tmp_path: Path) -> None:
    run = runs.create_run(tmp_path, "exp", {"seed": 1})
    assert run.path.parent == tmp_path / "exp"
    assert (run.path / "config.yaml").read_text().strip() == "seed: 1"
    runs.update_summary(run, status="running", step=0)
    runs.update_summary(run, status="completed", step=5)
    loaded = runs.load_run(run.path)
    assert loaded.summary == {"status": "completed", "step": 5}
    assert loaded.name == f"exp/{run.run_id}" and loaded.config == {"seed": 1}
    assert run.checkpoint("best") == run.path / "checkpoints" / "best.ckpt"


def test_bad_status_refused(tmp_path: Path) -> None:
    run = runs.create_run(tmp_path, "exp", {})
    with pytest.raises(ValueError):
        runs.update_summary(run, status="done")


def _make(root: str, q: "mp.Queue") -> None:
    q.put(str(runs.create_run(root, "same", {}).path))


def test_parallel_runs_get_distinct_folders(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_make, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    paths = {q.get(timeout=5) for _ in procs}
    assert len(paths) == 4


def test_list_and_resolve(tmp_path: Path) -> None:
    a = runs.create_run(tmp_path, "a", {})
    b = runs.create_run(tmp_path, "b", {})
    assert {r.name for r in runs.list_runs(tmp_path)} == {a.name, b.name}
    assert runs.resolve_run(a.name, tmp_path).path == a.path.resolve()
    assert runs.resolve_run(b.run_id, tmp_path).path == b.path.resolve()
    assert runs.resolve_run("last", tmp_path).path in (a.path, b.path)


@pytest.mark.parametrize("name", ["../outside", "/etc", "a/../../outside", "x\x00y", "%2e%2e/outside", "a%2F..%2F..%2Foutside"])
def test_resolve_refuses_paths_outside_root(tmp_path: Path, name: str) -> None:
    root = tmp_path / "runs"
    runs.create_run(root, "a", {})
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.yaml").write_text("{}")
    with pytest.raises(LabError):
        runs.resolve_run(name, root)


def test_resolve_refuses_symlink_escaping_root(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    runs.create_run(root, "a", {})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.yaml").write_text("{}")
    os.symlink(outside, root / "a" / "link")
    with pytest.raises(LabError, match="outside the runs root"):
        runs.resolve_run("a/link", root)


def test_runs_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "r"))
    assert runs.runs_root() == tmp_path / "r"
    assert runs.list_runs() == []


def test_runs_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LabError, match="is a file"):
        runs.create_run(f, "exp", {})


def test_scalars_reads_tensorboard_events_and_tolerates_truncation(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = runs.create_run(tmp_path, "exp", {})
    w = SummaryWriter(str(run.path))
    for step in range(5):
        w.add_scalar("train/loss", 5.0 - step, step)
    w.close()
    curves = runs.scalars(run)
    assert [s for s, _, _ in curves["train/loss"]] == [0, 1, 2, 3, 4]
    assert curves["train/loss"][-1][2] == pytest.approx(1.0)
    event = next(run.path.glob("events.out.tfevents.*"))
    data = event.read_bytes()
    event.write_bytes(data[:-7])  # cut the last record short, as a crash mid-write would
    truncated = runs.scalars(run)["train/loss"]
    assert [s for s, _, _ in truncated] == [0, 1, 2, 3]


def test_a_running_run_whose_process_died_reads_crashed(tmp_path: Path, other_process) -> None:
    child, ident = other_process
    run = runs.create_run(tmp_path, "exp", {})
    runs.update_summary(run, status="running", process=ident)
    assert runs.load_run(run.path).status == "running"
    assert runs.status_note(runs.load_run(run.path)) is None
    child.kill()
    child.wait()
    crashed = runs.load_run(run.path)
    assert crashed.status == runs.CRASHED == "crashed"
    note = runs.status_note(crashed)
    assert f"pid {ident['pid']}" in note and f"lab fit --resume {run.name}" in note
    # Ended runs keep their status; a run without a recorded process (older lab) or one on
    # another host cannot be judged from here and keeps saying running.
    runs.update_summary(run, status="completed")
    assert runs.load_run(run.path).status == "completed"
    runs.update_summary(run, status="running", process=None)
    assert runs.load_run(run.path).status == "running"
    runs.update_summary(run, status="running", process={**ident, "host": "elsewhere"})
    assert runs.load_run(run.path).status == "running"
