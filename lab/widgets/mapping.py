"""Widget state <-> the one config shape, with no ipywidgets import (unit-testable anywhere).

    from lab.widgets.mapping import state_from_config, config_from_state, assess
    state = state_from_config("gpt-nano")          # {"preset": "gpt-nano", "n_layer": 4, ..., "lr": 0.002}
    state["n_head"] = 3
    a = assess(state)                              # validates through lab.config, plans through lab.plan
    a.ok, a.reason                                 # False, "model.n_embd = 128 is invalid: expected a multiple of ..."
    cfg = config_from_state({**state, "n_head": 4})   # a validated lab.config.Config

The panel in ``lab.widgets.panel`` is a thin view over these functions: every value it
shows, every refusal and every config it trains comes from here, so a browser is never
needed to test what the panel does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from lab.config import Config, load_config
from lab.errors import LabError

FIELDS: dict[str, str] = {
    "n_layer": "model.n_layer",
    "n_head": "model.n_head",
    "n_embd": "model.n_embd",
    "block_size": "model.block_size",
    "dropout": "model.dropout",
    "lr": "optimizer.lr",
    "warmup_steps": "optimizer.warmup_steps",
    "batch_size": "data.batch_size",
    "max_steps": "trainer.max_steps",
    "precision": "trainer.precision",
    "strategy": "trainer.strategy",
    "devices": "trainer.devices",
}
"""Widget name -> dotted config key. ``preset`` is the one widget that is not a config value."""

# Strategies that start worker processes by re-running the script (ddp, ddp_spawn) cannot work
# from a notebook, whose code is not a script: Lightning's ddp_notebook forks the kernel instead.
NOTEBOOK_MULTI_DEVICE = ("ddp_notebook",)


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def applicable(cfg: Config) -> dict[str, bool]:
    """Which widgets mean something for this config (an MLP has no n_head, a CNN no block size)."""
    return {name: _get(cfg, key) is not None for name, key in FIELDS.items()}


def state_from_config(config: str | Config, preset: str | None = None) -> dict[str, Any]:
    """The panel's state for a preset name (or a Config plus the preset it came from).

    Fields the model does not have are ``None`` (the panel disables those widgets).
    """
    if isinstance(config, str):
        preset, cfg = config, load_config(config)
    else:
        cfg = config
    state: dict[str, Any] = {"preset": preset or cfg.experiment}
    for name, key in FIELDS.items():
        value = _get(cfg, key)
        state[name] = value
    return state


def overrides_from_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides for the widget values that apply (None = the model has no such field)."""
    return {FIELDS[name]: value for name, value in state.items() if name in FIELDS and value is not None}


def config_from_state(state: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> Config:
    """A validated Config: the preset, then ``base`` overrides (e.g. small-mode settings), then the widgets.

    Raises ``lab.errors.ConfigError`` (naming field, value and range) exactly as ``lab fit`` would.
    """
    preset = state.get("preset")
    if not preset:
        raise LabError("the panel has no preset selected")
    return load_config(preset, {**dict(base or {}), **overrides_from_state(state)})


@dataclass
class Assessment:
    """What the panel shows about its current state."""

    ok: bool
    """Whether the Train button may start a run."""
    reason: str = ""
    """Why not (one line), empty when ok."""
    config: Config | None = None
    """The validated config, when it is valid."""
    params: int | None = None
    """Parameters (tied weights once), from the planner's meta-device build."""
    flops_per_unit: float | None = None
    """Training FLOPs per token (GPT) or per sample."""
    unit: str = "tokens"
    """What ``flops_per_unit`` counts."""
    memory_bytes: int | None = None
    """The planner's estimate of bytes per device."""
    device_memory: int | None = None
    """What the planner compares the estimate with."""
    fits: bool | None = None
    """The planner's verdict."""
    notes: list[str] = field(default_factory=list)
    """The planner's notes (assumptions)."""


def assess(state: Mapping[str, Any], base: Mapping[str, Any] | None = None, *, device: str | None = None,
           in_notebook: bool = True) -> Assessment:
    """Validate the state and plan it: parameter count, FLOPs per token/sample, memory per device.

    ``device`` is a planner device name (A100, H100, ..., cpu; None = this machine).
    ``in_notebook``: refuse multi-device strategies a kernel cannot start (see NOTEBOOK_MULTI_DEVICE).
    """
    from lab.plan import plan

    try:
        cfg = config_from_state(state, base)
    except LabError as e:
        return Assessment(ok=False, reason=str(e))
    devices = cfg.trainer.devices
    if in_notebook and devices != 1 and cfg.trainer.strategy not in NOTEBOOK_MULTI_DEVICE:
        return Assessment(ok=False, config=cfg, reason=(
            f"trainer.devices = {devices} with trainer.strategy = {cfg.trainer.strategy} cannot start from a notebook: "
            f"choose strategy {' or '.join(NOTEBOOK_MULTI_DEVICE)} (it forks the kernel), or run `lab fit` in a terminal"))
    try:
        p = plan(cfg, device=device, with_recommendation=False)
    except LabError as e:  # e.g. a strategy the planner cannot estimate on this device
        return Assessment(ok=True, config=cfg, notes=[f"no memory estimate: {e}"])
    a = Assessment(ok=True, config=cfg, params=p.model.params, flops_per_unit=p.flops_per_unit, unit=p.model.unit,
                   memory_bytes=p.memory.total, device_memory=p.device.memory, fits=p.fits, notes=list(p.notes))
    if not p.fits:
        a.ok = False
        a.reason = (f"the planner estimates {p.memory.total / 2**30:.2f} GiB per device, more than 90% of "
                    f"{p.device.name}'s {p.device.memory / 2**30:.2f} GiB: lower batch_size, block_size or the width")
    return a


def human(n: float | None, unit: str = "") -> str:
    """``1234567`` -> ``1.23M`` (for the panel's read-outs)."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for div, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{n} B"


class TrainJob:
    """``lab.train.fit`` in a background thread, so the kernel stays responsive, with a stop Event.

        job = TrainJob(cfg, callbacks=[feed]).start()
        job.stop()          # ends cleanly: last.ckpt saved, run marked interrupted
        run = job.wait()    # the Run (also job.run); job.error holds what went wrong, if anything
    """

    def __init__(self, config: Config, runs_root: Any = None, callbacks: tuple = (), on_done: Any = None) -> None:
        self.config, self.runs_root, self.callbacks, self.on_done = config, runs_root, tuple(callbacks), on_done
        self.stop_event = threading.Event()
        self.run: Any = None
        self.error: BaseException | None = None
        self.interrupted = False
        self.finished = False  # set before on_done runs, while the thread is still (briefly) alive
        self.thread = threading.Thread(target=self._target, name="lab-train", daemon=True)

    def _target(self) -> None:
        from lab import runs
        from lab.errors import RunInterrupted
        from lab.train import fit

        try:
            self.run = fit(self.config, runs_root=self.runs_root, callbacks=self.callbacks, progress=False,
                           stop=self.stop_event)
        except RunInterrupted as e:
            self.interrupted = True
            self.run = runs.load_run(e.run_dir) if getattr(e, "run_dir", None) else None
        except BaseException as e:  # shown in the panel; the kernel must survive it
            self.error = e
        finally:
            self.finished = True
            if self.on_done is not None:
                self.on_done(self)

    def start(self) -> "TrainJob":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self.finished

    def wait(self, timeout: float | None = None) -> Any:
        self.thread.join(timeout)
        return self.run
