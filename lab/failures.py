"""How a run that cannot go on is closed: marked ``failed`` with one line of advice that holds.

    from lab import failures
    raise failures.storage_failure(oserror, run, write=True, ended=session.ended)   # disk full, read-only
    if failures.is_out_of_memory(e): raise LabError(failures.oom_advice(cfg, run))

``lab.train.fit`` calls these from its last phase; the wording of storage errors themselves
lives in ``lab.fileio`` (``storage_error``), the checks before training in ``lab.preflight``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from lab import runs
from lab.checkpoints import CheckpointError, newest_intact
from lab.config import Config
from lab.errors import StorageError
from lab.fileio import out_of_space, storage_cause, storage_error


def storage_failure(e: OSError, run: runs.Run, write: bool, ended: Callable[..., Any]) -> StorageError:
    """The run could not write a file (full disk, read-only or unwritable folder): mark it
    ``failed`` with one line naming the folder and the cause, and advise only what can work:
    ``--resume`` only when a checkpoint of the run loads, "free disk space" only for a full disk."""
    try:
        ckpt: Path | None = newest_intact(run.path)[0]
    except CheckpointError:
        ckpt = None
    path = e.path if isinstance(e, StorageError) else (e.filename or run.path)
    what = e.what if isinstance(e, StorageError) else "write"

    def line(recorded: bool) -> StorageError:
        status = ("the run is marked failed" if recorded else
                  f"summary.json could not be updated either, so `lab runs` will show {run.name} as crashed")
        resume = f"`lab fit --resume {run.name}` continues it from {ckpt.name}" if ckpt else ""
        if out_of_space(e):
            advice = (f"free disk space under {{folder}}, then {resume}" if ckpt else
                      "it has no checkpoint yet: free disk space under {folder} and start the run again")
        else:
            advice = (f"make {{folder}} writable, then {resume}" if ckpt else
                      "it has no checkpoint yet: start the run again in a writable runs folder "
                      "(--runs_dir or $LAB_RUNS_DIR)")
        return storage_error(e, path, what=what, if_full=f"{status}; {advice}", if_read_only=f"{status}; {advice}")

    recorded = record_failure(run, ended, str(line(recorded=True))) if write else True
    return line(recorded)


def record_failure(run: runs.Run, ended: Callable[..., Any], reason: str) -> bool:
    """Mark the run failed with ``reason``; False when summary.json cannot be written.

    On a full disk the failed write has already removed its own temp file; stray temp files
    of this run (a kill during an earlier save) are removed before the one retry.
    """
    for attempt in range(2):
        try:
            ended(status="failed", error=reason)
            return True
        except OSError as e:  # StorageError included
            if storage_cause(e) is None:
                raise
            if attempt == 0:
                for tmp in [*run.path.glob(".*.part"), *run.checkpoints_dir.glob(".*.part")]:
                    tmp.unlink(missing_ok=True)
    return False


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


def oom_advice(cfg: Config, run: runs.Run) -> str:
    b, acc = cfg.data.batch_size, cfg.trainer.accumulate_grad_batches
    smaller = max(1, b // 2)
    return (f"out of memory with micro-batch {b} on {cfg.trainer.accelerator}: the run is marked failed. "
            f"Check what fits with `lab plan --config {run.path / runs.CONFIG}`; to keep the same global batch, "
            f"try --data.batch_size {smaller} --trainer.accumulate_grad_batches {acc * b // smaller}, or a sharded "
            "strategy (--trainer.strategy fsdp) on GPUs")
