"""A Lightning callback that feeds training progress to a listener, and the chart it drives.

    feed = LiveFeed(listener=lambda point: print(point))      # point: {"step", "loss", ...}
    fit(cfg, callbacks=[feed])
    feed.history                                               # every point, for plotting after the run
    png = chart_png(feed.history)                              # the live chart, as PNG bytes

The callback runs in the training thread; it only appends to a list and calls the listener,
so a slow chart never slows training much: the panel redraws at most every ``min_interval``.
"""

from __future__ import annotations

import io
import time
from typing import Any, Callable

import lightning as L
import torch

from lab.callbacks import Throughput

Point = dict[str, float]


def _scalar(value: Any) -> float | None:
    if torch.is_tensor(value) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class LiveFeed(L.Callback):
    """Collects ``{"step", "loss", "throughput", "val_loss"}`` points as training goes."""

    def __init__(self, listener: Callable[[Point], None] | None = None) -> None:
        self.listener = listener
        self.history: list[Point] = []
        self.unit = "samples"

    def _emit(self, point: Point) -> None:
        self.history.append(point)
        if self.listener is not None:
            self.listener(point)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = _scalar(outputs.get("loss") if isinstance(outputs, dict) else outputs)
        point: Point = {"step": float(trainer.global_step)}
        if loss is not None:
            point["loss"] = loss
        # lab.callbacks.Throughput measures every few steps: reuse its latest figure.
        for callback in trainer.callbacks:
            if isinstance(callback, Throughput) and callback.latest:
                self.unit = callback.unit
                point["throughput"] = callback.latest[f"perf/{callback.unit}_per_sec"]
        self._emit(point)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        v = _scalar(trainer.callback_metrics.get("val/loss"))
        if v is not None:
            self._emit({"step": float(trainer.global_step), "val_loss": v})


def series(history: list[Point], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the points that carry ``key``."""
    pts = [(p["step"], p[key]) for p in history if key in p]
    return [s for s, _ in pts], [v for _, v in pts]


def chart_png(history: list[Point], unit: str = "samples", title: str = "") -> bytes:
    """Loss (train and validation) and throughput side by side, as PNG bytes (Agg: thread-safe, no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=80)
    ax_loss, ax_tp = fig.subplots(1, 2)
    steps, loss = series(history, "loss")
    ax_loss.plot(steps, loss, label="train", linewidth=1)
    vsteps, vloss = series(history, "val_loss")
    if vloss:
        ax_loss.plot(vsteps, vloss, "o-", label="val")
    ax_loss.set(xlabel="step", ylabel="loss", title=title or "loss")
    ax_loss.legend(loc="upper right")
    tsteps, tp = series(history, "throughput")
    ax_tp.plot(tsteps, tp, color="tab:green")
    ax_tp.set(xlabel="step", ylabel=f"{unit}/s", title="throughput")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class Throttle:
    """Lets a call through at most every ``min_interval`` seconds (plus a final ``flush``)."""

    def __init__(self, min_interval: float = 0.5) -> None:
        self.min_interval, self._last = min_interval, float("-inf")

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.min_interval:
            self._last = now
            return True
        return False
