"""Lightning callbacks the Trainer factory adds to every run.

    trainer = L.Trainer(callbacks=[Throughput(peak_flops=env.peak_flops("cpu")), ResumeState(),
                                   FiniteLossGuard(), SaveOnInterrupt(run.checkpoint("last"))])
    ...
    throughput.summary()   # {"tokens_per_sec": 52000.0, "flops_per_sec": ..., "mfu": 0.41}

- ``Throughput`` logs ``perf/<unit>_per_sec``, ``perf/flops_per_sec`` and ``perf/mfu``
  (model-FLOPs utilisation: achieved training FLOP/s over the device's peak).
- ``ResumeState`` keeps RNG states and the sampler position in every checkpoint.
- ``FiniteLossGuard`` stops a run at the first NaN/inf loss, before the weights change.
- ``SaveOnInterrupt`` writes ``last.ckpt`` on Ctrl-C or SIGTERM at the end of the current batch.
- ``progress_bar()`` is Lightning's own bar, without a negative epoch total in step-bounded runs.
"""

from __future__ import annotations

import math
import multiprocessing
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from torch.multiprocessing import ProcessRaisedException

from lab.errors import LabError


class NonFiniteLossError(LabError):
    """The loss became NaN or infinite; the run stops before the weights are damaged."""


class StopRequested(Exception):
    """Raised by SaveOnInterrupt once last.ckpt is saved; ``fit`` turns it into RunInterrupted.

    Not a KeyboardInterrupt: Lightning's Ctrl-C handling touches signal handlers, which
    fails when training runs in a thread (a notebook's Train button).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stop requested (signal {signum})")
        self.signum = signum

    @classmethod
    def from_worker(cls, error: BaseException) -> "StopRequested | None":
        """The clean stop of a forked worker (ddp_notebook), or None for a real failure.

        Lightning's multiprocessing launcher hands the parent only the text of a worker's
        exception (torch's ``ProcessRaisedException``), so the stop is recognised by its
        qualified name and message there.
        """
        found = re.search(rf"{re.escape(cls.__module__)}\.{cls.__qualname__}: stop requested \(signal (\d+)\)",
                          str(error))
        return cls(int(found.group(1))) if isinstance(error, ProcessRaisedException) and found else None


def stop_event() -> Any:
    """An Event for a notebook's Stop button that also reaches ``ddp_notebook``'s forked workers.

    A ``threading.Event`` lives in one process's memory: set in the kernel, forked workers would
    never see it. A multiprocessing Event made before the fork is shared memory. Where fork does
    not exist (Windows), ddp_notebook does not either, and a thread Event is enough.
    """
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork").Event()
    return threading.Event()


class Throughput(L.Callback):
    """Measures tokens/s (or samples/s) and MFU over the training steps of a run.

    Time is taken between consecutive batch ends, so data loading counts (it is part of
    what a user waits for); the first ``warmup`` steps are left out of the run average.
    """

    def __init__(self, peak_flops: float | None = None, warmup: int = 5, log_every: int = 10) -> None:
        """``log_every``: the Trainer's ``log_every_n_steps``, so both write at the same steps."""
        self.peak_flops, self.warmup, self.log_every = peak_flops, warmup, log_every
        self._last: float | None = None
        self._units = self._flops = self._seconds = 0.0
        self._window: list[tuple[float, float, float]] = []
        self.unit, self._world = "samples", 1
        self.latest: dict[str, float] = {}
        """The last logged window's figures (``perf/...``), for live views such as the notebook chart."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        dt, self._last = now - (self._last or now), now
        units = pl_module.units_in(batch) * trainer.world_size
        flops = pl_module.flops_per_unit(batch) * units
        self.unit, self._world = pl_module.unit, trainer.world_size
        if batch_idx >= self.warmup:
            self._units += units
            self._flops += flops
            self._seconds += dt
        self._window.append((units, flops, dt))
        # Lightning writes step metrics at this step index (train/loss's x axis) when it is
        # a multiple of log_every_n_steps; the window is every step since the last write.
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        if (step + 1) % self.log_every == 0:
            u, f, s = (sum(col) for col in zip(*self._window))
            self._window.clear()
            metrics = {f"perf/{self.unit}_per_sec": u / s, "perf/flops_per_sec": f / s}
            if self.peak_flops:
                metrics["perf/mfu"] = f / s / (self.peak_flops * trainer.world_size)
            self.latest = metrics
            # Straight to the loggers, as Lightning's LearningRateMonitor does: self.log would
            # add its result bookkeeping (about 1 ms a value) for figures that need no reduction,
            # being totals over the ranks already. Loggers write on global rank 0 only.
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None  # validation time is not training time

    def state_dict(self) -> dict[str, Any]:
        """Run totals, saved in checkpoints: a resumed run keeps averaging over all its steps, and
        ddp_spawn's main process reads the workers' figures from their last.ckpt."""
        return {"units": self._units, "flops": self._flops, "seconds": self._seconds, "unit": self.unit,
                "world": self._world}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._units, self._flops, self._seconds = state_dict["units"], state_dict["flops"], state_dict["seconds"]
        self.unit, self._world = state_dict["unit"], state_dict["world"]

    def summary(self) -> dict[str, float]:
        """Run averages (after warm-up) for summary.json."""
        if self._seconds <= 0:
            return {}
        out = {f"{self.unit}_per_sec": self._units / self._seconds, "flops_per_sec": self._flops / self._seconds}
        if self.peak_flops:
            out["mfu"] = out["flops_per_sec"] / (self.peak_flops * self._world)
            out["peak_flops"] = self.peak_flops
        return out


class ResumeState(L.Callback):
    """Saves what Lightning's checkpoints leave out, so a resumed run continues exactly.

    Lightning restores weights, optimizer, scheduler and loop counters; this adds the RNG
    states (Python, NumPy, torch) and the position in the training sampler. RNG states are
    put back just before the first batch after resuming, so nothing that runs between the
    restore and that batch (building data loaders draws from torch's RNG) disturbs them.
    """

    def __init__(self) -> None:
        self.batches_in_epoch = 0
        self._pending: dict[str, Any] | None = None
        self._flush = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches_in_epoch = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches_in_epoch = batch_idx + 1

    def state_dict(self) -> dict[str, Any]:
        return {"batches_in_epoch": self.batches_in_epoch, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict
        self.batches_in_epoch = state_dict["batches_in_epoch"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "skip"):
            sampler.skip(self._pending["batches_in_epoch"] * loader.batch_size)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._flush = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending["rng"])
            self._pending = None
        if self._flush:
            # The checkpointed step's metrics are logged after the save: make them durable
            # now, or a kill -9 before the writer's next timed flush (2 min) would lose the
            # curve points up to the checkpoint, which the resumed run does not log again.
            for logger in trainer.loggers:
                logger.save()
            self._flush = False


def rng_states() -> dict[str, Any]:
    """Every RNG a training step can draw from, as plain data and tensors (safe to load)."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class FiniteLossGuard(L.Callback):
    """Stops a run whose loss is NaN or infinite before the bad step touches the weights."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = loss.item()  # one host sync either way; ~30x cheaper than torch.isfinite(loss).all() on a scalar
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the training loss became {value} at step {trainer.global_step}: the run is marked failed "
                "and its last good checkpoint is kept. Try a lower --optimizer.lr, --trainer.gradient_clip_val 1.0, "
                "or precision 32-true")


def validation_follows(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether Lightning validates right after this training batch (then it checkpoints there)."""
    every = trainer.val_check_batch
    periodic = isinstance(every, int) and every > 0 and (batch_idx + 1) % every == 0
    return trainer.enable_validation and (periodic or trainer.global_step >= trainer.max_steps > 0)


class StepCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` every N optimizer steps, after every validation, and at the end.

    Where a validation follows a step, the save waits until it has finished: a checkpoint
    taken before it would resume after it, and its val/loss point would be missing from
    the curves. (Lightning's own ``save_last`` only saves when a best checkpoint was saved.)
    Being a ModelCheckpoint, it runs after the best-checkpoint callback, so the state it
    saves already knows the newest best score.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not validation_follows(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _save_last_now(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_now(trainer)


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C or SIGTERM, finish the current step, save ``last.ckpt``, then stop.

    Stopping at a step boundary is what makes the save resumable exactly: an interrupt
    raised mid-step leaves half-updated weights and loop counters Lightning cannot restore
    consistently. The checkpoint is written where the step-interval ones are (train batch
    end, or after the validation that follows the step); the run then stops at the start
    of the next batch, once the step's metrics are logged and flushed. A second Ctrl-C
    stops at once (``--resume`` then uses the last step-interval checkpoint). Under DDP the
    ranks agree on the stop, so none waits in a collective for a rank that already left.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, path: str | Path, stop: threading.Event | None = None) -> None:
        self.path = Path(path)
        self.stop = stop  # set from another thread (a notebook's Stop button) to stop the same way
        self.signum: int | None = None
        self._saved = False
        self._previous: dict[int, Any] = {}

    def _request(self, signum: int, frame: Any) -> None:
        self.signum = signum
        # The next Ctrl-C is the impatient one: let it through.
        signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signum, self._saved = None, False
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._request)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.signum is None and self.stop is not None and self.stop.is_set():
            self.signum = signal.SIGINT
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            self.signum = self.signum or signal.SIGTERM  # another rank was signalled
            if not validation_follows(trainer, batch_idx):
                trainer.save_checkpoint(self.path, weights_only=False)  # full state: resumable
            self._saved = True  # else StepCheckpoint writes last.ckpt once the validation is done

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._saved:
            for logger in trainer.loggers:
                logger.save()
            raise StopRequested(int(self.signum or signal.SIGINT))

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()


class _RichBar(RichProgressBar):
    """Lightning's rich bar, reading "Epoch 3" where a run bounded by steps has no epoch total.

    Such a run has ``max_epochs`` -1, and Lightning 2.6's bar printed "Epoch 0/-2" (its max_epochs - 1;
    upstream Lightning-AI/pytorch-lightning#21925).
    """

    def _get_train_description(self, current_epoch: int) -> str:
        if (self.trainer.max_epochs or 0) >= 0:
            return super()._get_train_description(current_epoch)
        # padded to the validation bar's label as Lightning pads it, so the bar does not jump
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"


def progress_bar() -> ProgressBar:
    """The bar Lightning would pick by itself (rich when installed, else tqdm), with the fix above."""
    return _RichBar() if _RICH_AVAILABLE else TQDMProgressBar()
