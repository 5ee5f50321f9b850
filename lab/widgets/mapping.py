"""Widget state <-> the one config shape, with no ipywidgets import (unit-testable anywhere).

    from lab.widgets.mapping import state_from_config, config_from_state, assess
    state = state_from_config("gpt-nano")          # {"preset": "gpt-nano", "n_layer": 4, ..., "lr": 0.002}
    state["n_head"] = 3
    a = assess(state)                              # validates through lab.config, plans through lab.plan
    a.ok, a.reason                                 # False, "model.n_embd = 128 is invalid: expected a multiple of ..."
    cfg = config_from_state({**state, "n_head": 4})   # a validated lab.config.Config
    job = TrainJob(cfg).start()                    # lab.train.fit in a thread; one per runs root in a kernel
    active_job() is job                            # what a re-run panel cell finds and attaches to

The panel in ``lab.widgets.panel`` is a thin view over these functions: every value it
shows, every refusal and every config it trains comes from here, so a browser is never
needed to test what the panel does.

Jobs are registered per runs root in the kernel: re-running a panel's cell while its run
trains gives a panel that finds the running job (``active_job``) and controls it, and a
second ``TrainJob.start`` for the same root is refused instead of training in parallel.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import json
import os
import re
import threading
import types
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from lab.callbacks import stop_event
from lab.config import Config, load_config
from lab.config_docs import section_docs
from lab.errors import LabError
from lab.families import build_datamodule, family_of
from lab.units import human_bytes

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
    "hidden": "model.hidden",
    "finetune": "finetune.method",
    "lora_rank": "finetune.rank",
    "lora_alpha": "finetune.alpha",
    "lora_targets": "finetune.targets",
}
"""Widget name -> dotted config key. ``preset`` is the one widget that is not a config value."""
LORA_FIELDS = ("finetune", "lora_rank", "lora_alpha", "lora_targets")
"""Widgets that mean something only for a family that names LoRA targets (``ModelFamily.lora_targets``)."""

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


def tooltips(cfg: Config) -> dict[str, str]:
    """Each widget's tooltip: its config field's docstring (``lab.config_docs``, the text `lab fit --help` shows)."""
    docs = section_docs(cfg)
    return {name: docs[key] for name, key in FIELDS.items() if key in docs}


def applicable(cfg: Config) -> dict[str, bool]:
    """Which widgets mean something for this config (an MLP has no n_head, a CNN no block size, and
    LoRA's only where the family names the layers it adapts)."""
    lora = bool(family_of(cfg).lora_targets)
    return {name: _get(cfg, key) is not None and (lora or name not in LORA_FIELDS) for name, key in FIELDS.items()}


def state_from_config(config: str | Config, preset: str | None = None) -> dict[str, Any]:
    """The panel's state for a preset name (or a Config plus the preset it came from).

    Fields the model does not have are ``None`` (the panel disables those widgets).
    """
    if isinstance(config, str):
        preset, cfg = config, load_config(config)
    else:
        cfg = config
    state: dict[str, Any] = {"preset": preset or cfg.experiment}
    applies = applicable(cfg)
    for name, key in FIELDS.items():
        state[name] = _get(cfg, key) if applies[name] else None
    return state


def parse_widths(value: Any, single: bool = False) -> Any:
    """Hidden widths typed in the panel: ``"64, 32"`` -> ``(64, 32)`` (an MLP's layers), or
    with ``single`` (a CNN's one hidden layer) ``"64"`` -> ``64``. Values that are not text pass through."""
    if not isinstance(value, str):
        return value
    parts = [p for p in re.split(r"[\s,]+", value.strip().strip("[]()")) if p]
    if not all(p.isdigit() for p in parts):
        raise LabError(f"hidden layers = {value!r} is invalid: give layer widths separated by commas, e.g. 64, 32")
    if single:
        if len(parts) != 1:
            raise LabError(f"hidden width = {value!r} is invalid: this model has one hidden layer: give its width, e.g. 64")
        return int(parts[0])
    return tuple(int(p) for p in parts)


def overrides_from_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides for the widget values that apply (None = the model has no such field).

    ``hidden`` typed as text is parsed by ``config_from_state``, which knows the model's shape of it.
    """
    return {FIELDS[name]: value for name, value in state.items() if name in FIELDS and value is not None}


def config_from_state(state: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> Config:
    """A validated Config: the preset, then ``base`` overrides (e.g. small-mode settings), then the widgets.

    Raises ``lab.errors.ConfigError`` (naming field, value and range) exactly as ``lab fit`` would.
    """
    preset = state.get("preset")
    if not preset:
        raise LabError("the panel has no preset selected")
    overrides = overrides_from_state(state)
    if isinstance(overrides.get("model.hidden"), str):
        # An MLP has a list of hidden widths, the CNN a single one: the preset's own value says which.
        like = _get(load_config(preset, dict(base or {})), "model.hidden")
        overrides["model.hidden"] = parse_widths(overrides["model.hidden"], single=isinstance(like, int))
    return load_config(preset, {**dict(base or {}), **overrides})


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
    """Parameters (tied weights once), from the planner's meta-device build of the model ``fit`` builds."""
    trainable: int | None = None
    """Of those, the ones that train (all, or LoRA's adapters): only they have gradients and optimizer states."""
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
    from lab.plan import FIT_MARGIN, plan

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
        p = plan(_as_built(cfg), device=device, with_recommendation=False)
    except LabError as e:  # e.g. a strategy the planner cannot estimate on this device, a block size the data lacks
        return Assessment(ok=True, config=cfg, notes=[f"no memory estimate: {e}"])
    a = Assessment(ok=True, config=cfg, params=p.model.params, trainable=p.model.trainable,
                   flops_per_unit=p.flops_per_unit, unit=p.model.unit, memory_bytes=p.memory.total,
                   device_memory=p.device.memory, fits=p.fits, notes=list(p.notes))
    if not p.fits:
        a.ok = False
        a.reason = (f"the planner estimates {human_bytes(p.memory.total)} per device, more than {1 - FIT_MARGIN:.0%} "
                    f"of {p.device.name}'s {human_bytes(p.device.memory)}: lower batch_size, block_size or the width")
    return a


_VOCAB: dict[str, int] = {}


def data_vocab(cfg: Config) -> int:
    """The vocabulary a tokenized model (a GPT with ``model.vocab_size: null``) trains with: its tokenizer's.

    The planner alone can only bound it (256 for characters); ``fit`` takes the real count from
    the prepared data, so the panel does too (the data cache is built once, as ``fit`` would).
    """
    key = repr(dataclasses.replace(cfg.data, batch_size=0))
    if key not in _VOCAB:
        dm = build_datamodule(cfg)
        dm.prepare_data()
        dm.setup("fit")  # also refuses a block size longer than a split, as fit would
        _VOCAB[key] = int(dm.vocab_size)
    return _VOCAB[key]


def _as_built(cfg: Config) -> Config:
    """``cfg`` with what the data decides (a tokenizer's vocabulary), so the planner counts the model ``fit`` builds."""
    fam = family_of(cfg)
    if fam.complete is None or not fam.tokenized:
        return cfg
    built = copy.deepcopy(cfg)
    built.model = fam.complete(cfg.model, types.SimpleNamespace(vocab_size=data_vocab(cfg)))
    return built


def human(n: float | None, unit: str = "") -> str:
    """``1234567`` -> ``1.23M`` (for the panel's read-outs)."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


_ACTIVE: dict[str, "TrainJob"] = {}
"""Runs root (resolved) -> the job training into it in this kernel."""
_WATCHERS: dict[str, list[weakref.WeakMethod]] = {}
_LOCK = threading.Lock()


def _root_key(root: Any) -> str:
    from lab.runs import runs_root

    return str(runs_root(root).resolve())


def active_job(root: Any = None) -> "TrainJob | None":
    """The job training into ``root`` (default: the lab's runs root) in this kernel, if any."""
    with _LOCK:
        job = _ACTIVE.get(_root_key(root))
    return job if job is not None and job.running else None


def watch(root: Any, callback: Callable[["TrainJob"], None]) -> None:
    """Call ``callback(job)`` (a bound method: held weakly) whenever a job starts training into ``root``."""
    with _LOCK:
        _WATCHERS.setdefault(_root_key(root), []).append(weakref.WeakMethod(callback))


EXIT_WAIT_S = 4.0
"""How long a kernel that is shutting down waits for its runs to save ``last.ckpt`` (Jupyter's restart
waits 5 s for a kernel to exit before it kills it)."""


@atexit.register
def _stop_at_exit(timeout: float = EXIT_WAIT_S) -> None:
    """A kernel shut down or restarted from Jupyter exits normally first: ask its runs to stop
    at the end of the current step, so each saves ``last.ckpt`` and is marked ``interrupted``
    (resumable) rather than killed mid-step with nothing to resume from. A kernel killed
    outright (SIGKILL, out of memory) runs nothing: its run reads ``crashed``, and
    ``lab runs`` offers ``--resume`` only if a checkpoint exists."""
    import time

    with _LOCK:
        jobs = [job for job in _ACTIVE.values() if job.running]
    for job in jobs:
        job.exiting = True  # no widget updates from a kernel that is going away
        job.stop()
    deadline = time.monotonic() + timeout
    for job in jobs:
        job.thread.join(max(0.0, deadline - time.monotonic()))


class TrainJob:
    """``lab.train.fit`` in a background thread, so the kernel stays responsive, with a stop Event.

        job = TrainJob(cfg, callbacks=[feed]).start()
        job.stop()          # ends cleanly: last.ckpt saved, run marked interrupted
        run = job.wait()    # the Run (also job.run); job.error holds what went wrong, if anything
        job.run_path        # the run folder, known while it trains (also under ddp_notebook)

    One job per runs root trains at a time in a kernel: ``start`` refuses a second one
    (``active_job`` finds the first).
    """

    def __init__(self, config: Config, runs_root: Any = None, callbacks: tuple = (), on_done: Any = None) -> None:
        self.config, self.runs_root, self.callbacks = config, runs_root, tuple(callbacks)
        self.key = _root_key(runs_root)
        self._done: list[Callable[[TrainJob], None]] = [on_done] if on_done is not None else []
        self.stop_event = stop_event()  # reaches ddp_notebook's forked workers too
        self.run: Any = None
        self.error: BaseException | None = None
        self.interrupted = False
        self.finished = False  # set before on_done runs, while the thread is still (briefly) alive
        self.exiting = False  # the kernel is shutting down: on_done callbacks are skipped
        self._before: set[str] = set()
        self._run_path: Path | None = None
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
            with _LOCK:
                if _ACTIVE.get(self.key) is self:
                    del _ACTIVE[self.key]
            for callback in [] if self.exiting else list(self._done):
                callback(self)

    def add_done_callback(self, callback: Callable[["TrainJob"], None]) -> None:
        """Call ``callback(job)`` when the run ends (at once if it already has)."""
        self._done.append(callback)
        if self.finished and not self.thread.is_alive():
            callback(self)

    def start(self) -> "TrainJob":
        """Start training; ``LabError`` when a job already trains into the same runs root in this kernel."""
        with _LOCK:
            current = _ACTIVE.get(self.key)
            if current is not None and current.running:
                raise LabError(f"{current.describe()} is already training into {self.key} in this kernel: stop it "
                               "first (its panel's Stop button, or job.stop()), then start another")
            self._before = set(self._experiment_dirs())
            _ACTIVE[self.key] = self
            watchers = [ref() for ref in _WATCHERS.get(self.key, [])]
        self.thread.start()
        for callback in watchers:
            if callback is not None:
                callback(self)
        return self

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self.finished

    def wait(self, timeout: float | None = None) -> Any:
        self.thread.join(timeout)
        return self.run

    def describe(self) -> str:
        """``run gpt-nano/<id>`` once its folder exists, else ``a gpt-nano run``."""
        path = self.run_path
        return f"run {path.parent.name}/{path.name}" if path is not None else f"a {self.config.experiment} run"

    def _experiment_dirs(self) -> list[str]:
        folder = Path(self.key) / self.config.experiment
        try:
            return [d.name for d in folder.iterdir() if d.is_dir()]
        except OSError:
            return []

    @property
    def run_path(self) -> Path | None:
        """The run's folder: the new one under ``<root>/<experiment>/`` whose summary names this process.

        ``fit`` returns the Run only at the end; under ``ddp_notebook`` the training happens in
        forked workers, so the folder is how this process follows the run while it trains.
        """
        if self.run is not None:
            return Path(self.run.path)
        if self._run_path is None:
            for name in sorted(set(self._experiment_dirs()) - self._before, reverse=True):
                folder = Path(self.key) / self.config.experiment / name
                try:
                    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # not written yet (or not a run): looked at again on the next call
                if isinstance(summary, dict) and (summary.get("process") or {}).get("pid") == os.getpid():
                    self._run_path = folder
                    break
        return self._run_path
