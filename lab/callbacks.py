"""Lightning callbacks the Trainer factory adds to every run.

    trainer = L.Trainer(callbacks=[Throughput(peak_flops=env.peak_flops("cpu"))])
    ...
    cb.summary()   # {"tokens_per_sec": 52000.0, "mfu": 0.41, "step_time_s": 0.015}

``Throughput`` logs ``perf/<unit>_per_sec``, ``perf/flops_per_sec`` and ``perf/mfu``
(model-FLOPs utilisation: achieved training FLOP/s over the device's peak).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class Throughput(L.Callback):
    """Measures tokens/s (or samples/s) and MFU over the training steps of a run.

    Time is taken between consecutive batch ends, so data loading counts (it is part of
    what a user waits for); the first ``warmup`` steps are left out of the run average.
    """

    def __init__(self, peak_flops: float | None = None, warmup: int = 5, log_every: int = 10) -> None:
        self.peak_flops, self.warmup, self.log_every = peak_flops, warmup, log_every
        self._last: float | None = None
        self._units = self._flops = self._seconds = 0.0
        self._window: list[tuple[float, float, float]] = []
        self.unit = "samples"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        dt, self._last = now - (self._last or now), now
        units = pl_module.units_in(batch) * trainer.world_size
        flops = pl_module.flops_per_unit(batch) * units
        self.unit = pl_module.unit
        if batch_idx >= self.warmup:
            self._units += units
            self._flops += flops
            self._seconds += dt
        self._window.append((units, flops, dt))
        if len(self._window) >= self.log_every:
            u, f, s = (sum(col) for col in zip(*self._window))
            self._window.clear()
            metrics = {f"perf/{self.unit}_per_sec": u / s, "perf/flops_per_sec": f / s}
            if self.peak_flops:
                metrics["perf/mfu"] = f / s / (self.peak_flops * trainer.world_size)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = None  # validation time is not training time

    def summary(self) -> dict[str, float]:
        """Run averages (after warm-up) for summary.json."""
        if self._seconds <= 0:
            return {}
        out = {f"{self.unit}_per_sec": self._units / self._seconds, "flops_per_sec": self._flops / self._seconds}
        if self.peak_flops:
            out["mfu"] = out["flops_per_sec"] / self.peak_flops
            out["peak_flops"] = self.peak_flops
        return out
