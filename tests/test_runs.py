"""The runs folder layout, atomic summaries, listing, resolving and reading scalars."""

from __future__ import annotations

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


def test_parallel_runs_get_distinct_folders(tmp_path: Path) -> None:
    # Separate interpreters (not multiprocessing's spawn, which re-runs the parent's __main__:
    # after the dashboard tests, a Streamlit page script) start at the same moment.
    import subprocess
    import sys

    code = "import sys; from lab import runs; print(runs.create_run(sys.argv[1], 'same', {}).path)"
    children = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
                for _ in range(4)]
    paths = {child.communicate(timeout=120)[0].strip() for child in children}
    assert [child.returncode for child in children] == [0] * 4
    assert len(paths) == 4 and all(Path(p).parent == tmp_path / "same" for p in paths)


def test_list_and_resolve(tmp_path: Path) -> None:
    a = runs.create_run(tmp_path, "a", {})
    b = runs.create_run(tmp_path, "b", {})
    assert {r.name for r in runs.list_runs(tmp_path)} == {a.name, b.name}
    assert runs.resolve_run(a.name, tmp_path).path == a.path.resolve()
    assert runs.resolve_run(b.run_id, tmp_path).path == b.path.resolve()
    assert runs.resolve_run("last", tmp_path).path == b.path.resolve()


def test_runs_begun_in_one_second_list_in_the_order_they_began(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A sweep's tiny trials and its "train it again" run can start within the same second;
    # `last` must then be the newest, not whichever random suffix sorts highest.
    frozen = runs.time.gmtime(1_800_000_000)
    monkeypatch.setattr(runs.time, "gmtime", lambda *_: frozen)
    begun = [runs.create_run(tmp_path, exp, {}) for exp in ["sweep", "other", "sweep"] * 8]
    assert len({r.run_id[:15] for r in begun}) == 1  # one second for all of them
    assert [r.name for r in runs.list_runs(tmp_path)] == [r.name for r in begun]
    assert runs.resolve_run("last", tmp_path).path == begun[-1].path.resolve()


@pytest.mark.parametrize("name", ["last", "a/123", "123"])
def test_resolve_in_a_missing_runs_folder_says_so(tmp_path: Path, name: str) -> None:
    # A fresh clone has no runs/ yet: "last" used to list it and raise FileNotFoundError.
    with pytest.raises(LabError, match="no runs folder .*lab quickstart"):
        runs.resolve_run(name, tmp_path / "runs")


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
    # No checkpoint yet: resuming is not offered, starting again is.
    assert f"pid {ident['pid']}" in note and "--resume" not in note and "nothing to resume" in note
    run.checkpoints_dir.mkdir()
    run.checkpoint("last").write_bytes(b"x")
    assert f"lab fit --resume {run.name}" in runs.status_note(runs.load_run(run.path))
    # Ended runs keep their status; a run without a recorded process (older lab) or one on
    # another host cannot be judged from here and keeps saying running.
    runs.update_summary(run, status="completed")
    assert runs.load_run(run.path).status == "completed"
    runs.update_summary(run, status="running", process=None)
    assert runs.load_run(run.path).status == "running"
    runs.update_summary(run, status="running", process={**ident, "host": "elsewhere"})
    assert runs.load_run(run.path).status == "running"


def test_a_corrupt_run_is_one_unreadable_row_and_never_breaks_the_listing(tmp_path: Path, corrupt_runs) -> None:
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    good = runs.create_run(root, "good", {"seed": 1})
    runs.update_summary(good, status="completed")
    bad = corrupt_runs(root, outside=outside)
    listed = {r.name: r for r in runs.list_runs(root)}
    assert set(listed) == {good.name, *bad}
    assert listed[good.name].status == "completed" and listed[good.name].problem is None
    for name in bad:
        run = listed[name]
        assert run.status == runs.UNREADABLE and run.config == {} and run.summary == {}
        assert run.problem.startswith(("unreadable:", "refused:")) and "\n" not in run.problem
        assert runs.status_note(run) == f"{name} is skipped, {run.problem}"
    assert "not valid YAML" in listed["yaml-tag/20990101-000000-bad0"].problem
    assert "not UTF-8" in listed["binary/20990101-000000-bad0"].problem
    assert "JSON list" in listed["summary-list/20990101-000000-bad0"].problem
    # The outside folder's data never shows: the link is refused, not followed.
    assert "outside the runs root" in listed["linked/20990101-000000-link"].problem


def test_naming_one_run_reads_only_that_run(tmp_path: Path, corrupt_runs) -> None:
    root = tmp_path / "runs"
    good = runs.create_run(root, "good", {"seed": 1})
    corrupt_runs(root, outside=tmp_path / "elsewhere")
    assert runs.resolve_run(good.name, root).config == {"seed": 1}
    assert runs.resolve_run(good.run_id, root).path == good.path.resolve()
    # 'last' skips the newer corrupt runs (their ids sort after the good one's).
    assert runs.resolve_run("last", root).path == good.path.resolve()
    for name, words in [("yaml-tag/20990101-000000-bad0", "not valid YAML"),
                        ("summary-list/20990101-000000-bad0", "JSON list"),
                        ("linked/20990101-000000-link", "outside the runs root")]:
        with pytest.raises(LabError, match=words):
            runs.resolve_run(name, root)


def test_one_runs_root_from_any_folder_of_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    from lab.cli import main
    from lab.widgets import workshop

    repo = tmp_path / "checkout"
    (repo / "lab").mkdir(parents=True)
    (repo / "lab" / "runs.py").write_text("")
    (repo / "notebooks").mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "large-model-lab"\n')
    monkeypatch.delenv("LAB_RUNS_DIR", raising=False)
    monkeypatch.chdir(repo)
    run = runs.create_run(None, "gpt-nano", {"seed": 1})
    assert run.path.parent.parent == repo / "runs"
    # A kernel's working directory is notebooks/: the same root, so a notebook's hint works there.
    monkeypatch.chdir(repo / "notebooks")
    assert runs.runs_root() == workshop.runs_dir() == repo / "runs"
    assert runs.resolve_run(run.name).path == run.path.resolve()
    assert main(["runs"]) == 0 and run.name in capsys.readouterr().out
    # $LAB_RUNS_DIR still wins; outside any lab checkout it is ./runs.
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert runs.runs_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("LAB_RUNS_DIR")
    monkeypatch.chdir(tmp_path)
    assert runs.runs_root() == Path("runs")


def test_lineage_says_where_the_weights_started(tmp_path: Path) -> None:
    from lab.runs import create_run, lineage, update_summary

    scratch = create_run(tmp_path, "gpt-nano", {"model": {"name": "gpt"}})
    assert lineage(scratch) is None  # random weights: nothing to say
    tuned = create_run(tmp_path, "gpt-nano", {"model": {"name": "gpt", "init_from": "gpt-nano/a"}})
    update_summary(tuned, lineage={"kind": "run", "source": "gpt-nano/a", "checkpoint": "best.ckpt"})
    assert lineage(tuned) == "gpt-nano/a (lab run, best.ckpt)"
    hub = create_run(tmp_path, "gpt2", {"model": {"name": "gpt", "init_from": "gpt2"}})
    update_summary(hub, lineage={"kind": "hub", "source": "gpt2", "commit": "607a30d783dfa663caf39e06633721c8d4cfcd7e"})
    assert lineage(hub) == "gpt2 (Hugging Face Hub, 607a30d783df)"


def test_lineage_reaches_lab_runs_the_run_row_and_the_comparison(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from lab import dashboard_data as dd
    from lab.cli import main
    from lab.runs import create_run, update_summary

    scratch = create_run(tmp_path, "gpt-nano", {"model": {"name": "gpt"}})
    update_summary(scratch, status="completed")
    assert main(["runs", "--runs_dir", str(tmp_path)]) == 0
    assert " from " not in capsys.readouterr().out  # no run started from pretrained weights: no column
    tuned = create_run(tmp_path, "gpt-nano", {"model": {"name": "gpt", "init_from": "gpt-nano/a"}})
    update_summary(tuned, status="completed",
                   lineage={"kind": "run", "source": "gpt-nano/a", "checkpoint": "best.ckpt"})
    assert main(["runs", "--runs_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "from" in out and "gpt-nano/a (lab run, best.ckpt)" in out
    assert dd.run_row(tuned)["from"] == "gpt-nano/a (lab run, best.ckpt)" and dd.run_row(scratch)["from"] is None
    row = next(r for r in dd.final_metrics([scratch, tuned]) if r["metric"] == "started from")
    assert row[scratch.name] == "random weights" and row[tuned.name] == "gpt-nano/a (lab run, best.ckpt)"
