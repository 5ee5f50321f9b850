"""Training you can trust: exact resume after kill -9, SIGTERM, NaN and OOM guards, disk checks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from lab import runs
from lab.callbacks import NonFiniteLossError
from lab.checkpoints import CheckpointError, load_checkpoint
from lab.config import load_config
from lab.errors import LabError
from lab.train import fit

# Small enough for seconds, long enough (about 10 s) to be killed part-way.
RESUME = ["--trainer.max_steps", "400", "--trainer.val_check_interval", "100", "--trainer.limit_val_batches", "2",
          "--trainer.checkpoint_every_n_steps", "25", "--trainer.deterministic", "true", "--trainer.log_every_n_steps", "5",
          "--model.n_layer", "2", "--model.n_embd", "64", "--model.n_head", "2", "--model.block_size", "32",
          "--model.dropout", "0.1", "--data.test_fraction", "0", "--experiment", "resume"]


def _lab(*args: str, root: Path) -> subprocess.Popen:
    """Start the CLI; its output goes to files (a full pipe would block a chatty progress bar)."""
    exe = shutil.which("lab") or pytest.fail("the `lab` console script is not installed: pip install -e .")
    env = {**os.environ, "LAB_RUNS_DIR": str(root), "OMP_NUM_THREADS": "1"}
    root.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"{root.name}-{time.monotonic_ns()}"
    proc = subprocess.Popen([exe, *args], env=env, stdout=open(f"{log}.out", "w"), stderr=open(f"{log}.err", "w"))
    proc.err_path = Path(f"{log}.err")  # type: ignore[attr-defined]
    return proc


def _err(proc: subprocess.Popen) -> str:
    return proc.err_path.read_text()[-2000:]  # type: ignore[attr-defined]


def _wait_for_checkpoints(root: Path, saves: int, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """Wait until last.ckpt has been (re)written ``saves`` times; return the run folder."""
    seen: set[float] = set()
    deadline = time.time() + timeout
    while len(seen) < saves:
        assert proc.poll() is None, f"training ended before it could be killed: {_err(proc)}"
        assert time.time() < deadline, "no checkpoints appeared"
        for ckpt in root.glob("*/*/checkpoints/last.ckpt"):
            try:
                seen.add(ckpt.stat().st_mtime)
            except FileNotFoundError:
                pass
        time.sleep(0.02)
    return next(root.glob("*/*/checkpoints/last.ckpt")).parents[1]


def _curve(run_dir: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    return [(s, v) for s, _, v in runs.scalars(runs.load_run(run_dir))[tag]]


@pytest.mark.slow
def test_kill_9_and_resume_equals_uninterrupted_run(tmp_path: Path, tensorboard_scalars) -> None:
    straight = _lab("fit", *RESUME, root=tmp_path / "a")
    assert straight.wait(300) == 0, _err(straight)
    (reference,) = runs.list_runs(tmp_path / "a")

    victim = _lab("fit", *RESUME, root=tmp_path / "b")
    run_dir = _wait_for_checkpoints(tmp_path / "b", saves=4, proc=victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    run = runs.load_run(run_dir)  # summary.json still says running: a SIGKILL leaves no chance to write
    assert run.summary["status"] == "running" and run.status == "crashed"  # ... but its process is gone

    resumed = _lab("fit", "--resume", "last", "--config", "gpt-nano", *RESUME, root=tmp_path / "b")
    assert resumed.wait(300) == 0, _err(resumed)
    run = runs.load_run(run_dir)
    assert run.status == "completed" and run.summary["step"] == 400 and len(run.summary["resumed"]) == 1
    assert 0 < run.summary["resumed"][0]["step"] < 400

    a = load_checkpoint(reference.checkpoint("last"))["state_dict"]
    b = load_checkpoint(run.checkpoint("last"))["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "final weights differ from the uninterrupted run"
    assert _curve(run_dir) == _curve(reference.path)  # same steps, same values: none missing, none twice
    # The killed process wrote steps past its last checkpoint; the resume purged and rewrote them.
    assert runs.scalars(run) == tensorboard_scalars(run_dir)
    for tag in ("train/loss", "val/loss", "perf/tokens_per_sec"):  # ("epoch" is logged twice a step by design)
        steps = [s for s, _, _ in runs.scalars(run)[tag]]
        assert len(steps) == len(set(steps)) and steps == sorted(steps), tag
    assert _curve(run_dir, "val/loss") == _curve(reference.path, "val/loss")


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_marks_interrupted_and_exits_143(tmp_path: Path) -> None:
    proc = _lab("fit", *RESUME, root=tmp_path)
    run_dir = _wait_for_checkpoints(tmp_path, saves=2, proc=proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143, _err(proc)
    assert "lab fit --resume" in _err(proc)
    run = runs.load_run(run_dir)
    assert run.status == "interrupted"
    assert load_checkpoint(run.checkpoint("last"))["global_step"] == run.summary["step"] > 0


class _PoisonWeights(L.Callback):
    """Simulates divergence: weights turn NaN before step 6's forward pass."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 6:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = load_config("seed-mlp", {"trainer.max_steps": 50, "trainer.checkpoint_every_n_steps": 1})
    with pytest.raises(NonFiniteLossError, match="became nan at step 6"):
        fit(cfg, runs_root=tmp_path, progress=False, callbacks=[_PoisonWeights()])
    (run,) = runs.list_runs(tmp_path)
    assert run.status == "failed" and "step 6" in run.summary["error"]
    state = load_checkpoint(run.checkpoint("last"))
    assert state["global_step"] == 6
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


class _OOM(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_names_lab_plan_and_a_smaller_micro_batch(tmp_path: Path) -> None:
    cfg = load_config("gpt-nano", {"trainer.max_steps": 5, "model.n_layer": 1, "model.n_embd": 32})
    with pytest.raises(LabError, match=r"lab plan --config .*--data.batch_size 6 --trainer.accumulate_grad_batches 2"):
        fit(cfg, runs_root=tmp_path, progress=False, callbacks=[_OOM()])
    (run,) = runs.list_runs(tmp_path)
    assert run.status == "failed"


def test_too_little_disk_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(LabError, match="MiB free"):
        fit(load_config("seed-mlp", {"trainer.max_steps": 5}), runs_root=tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_resume_in_process_continues_the_same_folder(tmp_path: Path) -> None:
    overrides = {"trainer.max_steps": 30, "trainer.checkpoint_every_n_steps": 10}
    cfg = load_config("seed-mlp", overrides)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, runs_root=tmp_path, progress=False, callbacks=[_InterruptAt(17)])
    (run,) = runs.list_runs(tmp_path)
    # The step under way when Ctrl-C came is finished, saved, then the run stops.
    assert run.status == "interrupted" and load_checkpoint(run.checkpoint("last"))["global_step"] == 18
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = fit(None, runs_root=tmp_path, progress=False, resume=run)
    assert done.path == run.path and done.status == "completed" and done.summary["step"] == 30
    # Lightning's "dataloader is not resumable" / "directory not empty" would only alarm the user here.
    assert not [w for w in caught if "not resumable" in str(w.message) or "is not empty" in str(w.message)]
    steps = [s for s, _ in _curve(run.path)]
    assert steps == sorted(set(steps)) and steps[-1] == 29


def test_resuming_a_run_that_is_still_training_is_refused(tmp_path: Path, other_process) -> None:
    run = runs.create_run(tmp_path, "seed-mlp", load_config("seed-mlp").to_dict())
    child, ident = other_process  # the "training" process, alive
    runs.update_summary(run, status="running", process=ident)
    before = sorted(p.name for p in run.path.iterdir())
    with pytest.raises(LabError, match=rf"still training \(pid {child.pid} .*stop it first"):
        fit(None, runs_root=tmp_path, progress=False, resume=runs.load_run(run.path))
    assert sorted(p.name for p in run.path.iterdir()) == before  # refused before any work
    child.kill()
    child.wait()  # now it has crashed: resuming is what the user should do; here it gets as far
    with pytest.raises(CheckpointError, match="nothing to resume from"):  # as finding no checkpoint
        fit(None, runs_root=tmp_path, progress=False, resume=runs.load_run(run.path))


class _InterruptAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would


def test_stop_event_from_another_thread_interrupts_cleanly(tmp_path: Path) -> None:
    # What a notebook's Stop button does: training runs in a thread, the button sets the event.
    stop = threading.Event()

    class _PressStop(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == 7:
                stop.set()

    errors: list[BaseException] = []

    def train() -> None:
        try:
            fit(load_config("seed-mlp", {"trainer.max_steps": 40}), runs_root=tmp_path, progress=False,
                callbacks=[_PressStop()], stop=stop)
        except BaseException as e:  # noqa: BLE001 - the thread hands it to the test
            errors.append(e)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join(120)
    assert len(errors) == 1 and isinstance(errors[0], KeyboardInterrupt)
    (run,) = runs.list_runs(tmp_path)
    assert run.status == "interrupted" and run.summary["step"] == 8
    assert load_checkpoint(run.checkpoint("last"))["global_step"] == 8
