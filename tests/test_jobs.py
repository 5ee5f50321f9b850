"""lab.jobs: background `lab` commands with their state on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import jobs
from lab.config import load_config
from lab.errors import LabError
from lab.train import fit

LONG_FIT = ["fit", "--config", "seed-mlp", "--trainer.max_steps", "200000"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base = tmp_path_factory.mktemp("runs")
    fit(load_config("seed-mlp", {"trainer.max_steps": 20, "trainer.val_check_interval": 10}),
        runs_root=base, progress=False)
    return base


def _run_name(root: Path) -> str:
    from lab.runs import list_runs

    return next(r.name for r in list_runs(root) if r.experiment == "seed-mlp")


def wait(job_id: str, root: Path, states: tuple[str, ...], timeout: float = 120) -> jobs.Job:
    end = time.time() + timeout
    while time.time() < end:
        job = next(j for j in jobs.list_jobs(root) if j.id == job_id)
        if job.state in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.state}; log:\n{jobs.tail(job, 40)}")


def test_job_runs_to_done_with_state_and_log_on_disk(root: Path) -> None:
    name = _run_name(root)
    job = jobs.start(["export", name, "--format", "safetensors"], root)
    assert job.state == "queued" and job.state_path.is_file() and job.pid
    done = wait(job.id, root, ("done", "failed"))
    assert done.state == "done", jobs.tail(done, 40)
    assert done.returncode == 0 and done.error is None and done.elapsed() > 0
    assert json.loads(done.state_path.read_text())["state"] == "done"  # what a restarted dashboard reads
    assert "exported" in jobs.tail(done) and f"$ lab export {name}" in jobs.tail(done)
    assert (root / name / "export" / "safetensors").is_dir()


def test_failed_job_records_the_error(root: Path) -> None:
    job = jobs.start(["evaluate", "no-such/run"], root)
    done = wait(job.id, root, ("done", "failed"))
    assert done.state == "failed" and done.returncode == 2
    assert done.error.startswith("exit code 2: error:") and "no-such/run" in done.error


@pytest.mark.slow
def test_second_click_returns_the_running_job_and_queue_waits(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_JOBS_PARALLEL", "1")
    first = jobs.start(LONG_FIT, root)
    again = jobs.start(list(LONG_FIT), root)
    assert again.id == first.id
    assert sum(j.args == LONG_FIT for j in jobs.list_jobs(root)) == 1
    wait(first.id, root, ("running",))
    second = jobs.start(["export", _run_name(root), "--format", "torchscript"], root)
    time.sleep(2)  # the runner polls for a slot twice a second
    assert jobs.get(second.id, root).state == "queued"  # one slot, taken by the fit
    cancelled = jobs.cancel(first.id, root)
    assert cancelled.state == "cancelled"
    end = time.time() + 30
    while jobs._alive(first.pid, first.id) and time.time() < end:
        time.sleep(0.2)
    assert not jobs._alive(first.pid, first.id)  # the runner's process group got SIGTERM
    assert jobs.get(first.id, root).state == "cancelled"  # not overwritten by the runner
    assert wait(second.id, root, ("done", "failed")).state == "done"
    # Cancelling a finished job changes nothing.
    assert jobs.cancel(second.id, root).state == "done"


def test_job_outlives_the_process_that_started_it(tmp_path: Path) -> None:
    """The dashboard may restart: the detached runner still records the result."""
    code = f"from lab import jobs; print(jobs.start(['evaluate'], {str(tmp_path)!r}).id)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    job_id = out.stdout.strip()
    job = wait(job_id, tmp_path, ("done", "failed"), timeout=60)
    assert job.state == "failed" and job.returncode == 2 and "required: run" in job.error


def test_vanished_runner_is_marked_failed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = jobs.Job(id="20260101-000000-abcdef", args=["evaluate", "x/y"], root=str(tmp_path), state="running",
                   started=time.time(), pid=dead.pid)
    jobs._save(job)
    [found] = jobs.list_jobs(tmp_path)
    assert found.state == "failed" and "runner process exited" in found.error
    # A job with a runner that is alive but not this job's (pid reuse) also counts as gone.
    assert not jobs._alive(os.getpid(), "20260101-000000-abcdef")


def test_only_lab_commands_are_accepted(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="one of"):
        jobs.start(["rm", "-rf", "/"], tmp_path)
    with pytest.raises(LabError, match="one of"):
        jobs.start([], tmp_path)
    with pytest.raises(LabError, match="runs_dir"):
        jobs.start(["evaluate", "x", "--runs_dir", "/elsewhere"], tmp_path)
    with pytest.raises(LabError):
        jobs.get("../etc", tmp_path)
    with pytest.raises(LabError, match="no job"):
        jobs.get("nope", tmp_path)
    assert jobs.list_jobs(tmp_path / "missing") == []


def test_config_job_args(tmp_path: Path) -> None:
    from lab.config import to_yaml

    text = to_yaml(load_config("seed-mlp", {"trainer.max_steps": 5}))
    args = jobs.config_job_args(text, tmp_path)
    assert args[:2] == ["fit", "--config"] and Path(args[2]).read_text() == text
    assert jobs.config_job_args(text, tmp_path) == args  # same text, same job: no duplicate
    with pytest.raises(LabError, match="model.n_embd"):
        jobs.config_job_args(to_yaml(load_config("gpt-nano")).replace("n_head: 4", "n_head: 3"), tmp_path)
    with pytest.raises(LabError, match="YAML"):
        jobs.config_job_args("model: [", tmp_path)
    with pytest.raises(LabError, match="mapping"):
        jobs.config_job_args("- 1\n- 2\n", tmp_path)


def test_error_from_log() -> None:
    log = "$ lab evaluate x\nsome warning\nerror: run 'x' not found\n"
    assert jobs.error_from_log(log, 2) == "exit code 2: error: run 'x' not found"
    assert jobs.error_from_log("Traceback\nValueError: boom\n", 1) == "exit code 1: ValueError: boom"
    assert jobs.error_from_log("", -9) == "exit code -9: no output"
