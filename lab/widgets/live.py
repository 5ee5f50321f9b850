"""A Lightning callback that feeds training progress to a listener, and the chart it drives.

    feed = LiveFeed(listener=lambda point: print(point))      # point: {"step", "loss", ...}
    fit(cfg, callbacks=[feed])
    feed.history                                               # every point, for plotting after the run
    png = chart_png(feed.history)                              # the live chart, as PNG bytes
    feed.read_events(run.path)                                 # or: the points from the run's event files

The callback runs in the training thread; it only appends to a list and calls the listener,
so a slow chart never slows training much: the panel redraws at most every ``min_interval``.
Under ``ddp_notebook`` training happens in forked worker processes: their copies of the
callback reach no listener in the kernel (and must not touch its widgets), so the panel
follows the run's own event files instead (``read_events``, through ``lab.runs.scalars``).
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
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


def points_from_scalars(curves: dict[str, list[tuple[int, float, float]]]) -> tuple[list[Point], str]:
    """(points, unit) from a run's curves (``lab.runs.scalars``): the same points the callback makes."""
    unit = "tokens" if "perf/tokens_per_sec" in curves else "samples"
    keys = {"train/loss": "loss", "val/loss": "val_loss", f"perf/{unit}_per_sec": "throughput"}
    points = [{"step": float(step), key: float(value)} for tag, key in keys.items() for step, _, value in curves.get(tag, [])]
    return sorted(points, key=lambda p: p["step"]), unit


class LiveFeed(L.Callback):
    """Collects ``{"step", "loss", "throughput", "val_loss"}`` points as training goes.

    Points come from the callback when training runs in this process (``in_process``), else
    from the run's event files (``read_events``); the first callback point drops any read ones.
    """

    def __init__(self, listener: Callable[[Point], None] | None = None) -> None:
        self.listeners: list[Callable[[Point], None]] = [listener] if listener is not None else []
        self.history: list[Point] = []
        self.unit = "samples"
        self.in_process = False
        """Whether the callback has seen training steps in this process (not in forked workers)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def add_listener(self, listener: Callable[[Point], None]) -> None:
        """Another panel showing the same run (a re-run cell) listens too."""
        self.listeners.append(listener)

    def _emit(self, point: Point) -> None:
        if os.getpid() != self._pid:
            return  # a forked ddp_notebook worker: its listeners' widgets live in the kernel, not here
        with self._lock:
            if not self.in_process:
                self.history, self.in_process = [], True  # points read from events are superseded
            self.history.append(point)
        for listener in list(self.listeners):
            listener(point)

    def read_events(self, run_dir: str | Path) -> bool:
        """Replace the points with the run's event files' (training elsewhere); True when they changed."""
        if self.in_process:
            return False
        from lab import runs

        points, unit = points_from_scalars(runs.scalars(Path(run_dir)))
        with self._lock:
            if self.in_process or (points == self.history and unit == self.unit):
                return False
            self.history, self.unit = points, unit
        return True

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


def chart_image() -> Any:
    """An ipywidgets PNG Image that stays hidden while it has no picture.

    An empty Image renders as the browser's broken-image icon under the buttons.
    """
    import ipywidgets as w

    image = w.Image(format="png", layout=w.Layout(display="none"))
    image.observe(lambda change: setattr(image.layout, "display", "" if change["new"] else "none"), "value")
    return image


def chart_png(history: list[Point], unit: str = "samples", title: str = "") -> bytes:
    """Loss (train and validation) and throughput side by side, as PNG bytes (Agg: thread-safe, no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=80)
    ax_loss, ax_tp = fig.subplots(1, 2)
    history = list(history)  # a copy: the training thread may append while this draws
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
