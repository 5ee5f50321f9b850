"""The hyperparameter panel: tune a config, see its cost, train it live, stop it cleanly.

    from lab.widgets import HyperparameterPanel
    panel = HyperparameterPanel("gpt-nano")        # display it: the last expression of a cell
    panel.set(n_layer=2, lr=3e-3)                  # or move the sliders
    panel.assessment.params, panel.assessment.reason
    panel.train_button.click()                     # same as clicking Train; training runs in a thread
    panel.stop_button.click()                      # ends it cleanly: last.ckpt kept, run `interrupted`
    run = panel.wait()                             # the Run under runs/<experiment>/<run_id>/

Everything the panel knows comes from ``lab.widgets.mapping`` (state <-> config, validation
through ``lab.config``, estimates from ``lab.plan``) and ``lab.train.fit``: the panel only
lays the values out. A panel made while a run trains into the same runs root in this kernel
(its cell re-run) attaches to that run: it shows it, its Stop stops it, and Train waits for
it to end; a Train click in a second panel attaches instead of starting a parallel run.
"""

from __future__ import annotations

import html
import math
import threading
import time
from typing import Any, Callable, Mapping

import ipywidgets as w

from lab.config import PRECISIONS, STRATEGIES, list_presets
from lab.errors import LabError
from lab.finetune import METHODS, TARGETS
from lab.units import human_bytes
from lab.widgets.live import LiveFeed, Throttle, chart_image, chart_png
from lab.widgets.mapping import (LORA_FIELDS, Assessment, TrainJob, active_job, assess, config_from_state, human,
                                 state_from_config, tooltips, watch)

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "hidden")
"""Widgets for model fields: hidden when the preset's model has no such field (an MLP has no heads)."""
HIDDEN_WHEN_ABSENT = (*MODEL_FIELDS, *LORA_FIELDS)
"""Widgets hidden when they do not apply: model fields the model lacks, LoRA where the family names no targets."""


def _wide() -> dict[str, Any]:
    # A Layout per widget: hiding one widget must not hide every widget sharing its Layout.
    return {"style": {"description_width": "110px"}, "layout": w.Layout(width="360px")}


def _widen(widget: w.Widget, value: Any) -> None:
    """Stretch a slider's range to hold a preset's value (a log slider's bounds are exponents)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not hasattr(widget, "max"):
        return
    if isinstance(widget, w.FloatLogSlider):
        exponent = math.log(value, widget.base) if value > 0 else widget.min
        widget.min, widget.max = min(widget.min, math.floor(exponent)), max(widget.max, math.ceil(exponent))
    else:
        widget.min, widget.max = min(widget.min, value), max(widget.max, value)


class HyperparameterPanel:
    """ipywidgets controls for the config fields in ``mapping.FIELDS`` plus Train/Stop and a live chart."""

    def __init__(self, preset: str = "gpt-nano", base: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] | None = None,
                 runs_root: Any = None, device: str | None = None, min_redraw_s: float = 0.5,
                 poll_s: float = 1.0) -> None:
        """``base``: overrides applied under the widgets, or a function preset -> overrides
        (``workshop.tiny`` shrinks each preset in small mode); ``device``: the planner's device name;
        ``poll_s``: how often the chart re-reads the run's event files when training runs in worker
        processes (``ddp_notebook``), where the live callback cannot reach this kernel."""
        self._base, self.runs_root, self.device, self.poll_s = base, runs_root, device, poll_s
        self.job: TrainJob | None = None
        self.feed: LiveFeed | None = None
        self._throttle = Throttle(min_redraw_s)
        self._loading = False
        c = self.controls = {
            "preset": w.Dropdown(description="preset", options=list_presets(), value=preset, **_wide()),
            "n_layer": w.IntSlider(description="n_layer", min=1, max=24, **_wide()),
            "n_head": w.IntSlider(description="n_head", min=1, max=16, **_wide()),
            "n_embd": w.IntSlider(description="n_embd", min=8, max=1024, step=8, **_wide()),
            "block_size": w.IntSlider(description="block_size", min=8, max=1024, step=8, **_wide()),
            "dropout": w.FloatSlider(description="dropout", min=0.0, max=0.5, step=0.05, **_wide()),
            "hidden": w.Text(description="hidden layers", placeholder="widths, e.g. 64, 32", continuous_update=False,
                             **_wide()),
            # .3e: a log slider's steps land on values such as 0.001995, which .1e would show as 2.0e-3.
            "lr": w.FloatLogSlider(description="learning rate", base=10, min=-5, max=-0.5, step=0.1,
                                   readout_format=".3e", **_wide()),
            "warmup_steps": w.IntSlider(description="warm-up steps", min=0, max=1000, step=5, **_wide()),
            "batch_size": w.IntSlider(description="batch size", min=1, max=256, **_wide()),
            "max_steps": w.IntText(description="steps", **_wide()),
            "precision": w.Dropdown(description="precision", options=list(PRECISIONS), **_wide()),
            "strategy": w.Dropdown(description="strategy", options=list(STRATEGIES), **_wide()),
            "devices": w.BoundedIntText(description="devices", min=1, max=64, **_wide()),
            "finetune": w.Dropdown(description="fine-tune", options=list(METHODS), **_wide()),
            "lora_rank": w.IntSlider(description="LoRA rank", min=1, max=64, **_wide()),
            "lora_alpha": w.FloatSlider(description="LoRA alpha", min=1.0, max=128.0, step=1.0, **_wide()),
            "lora_targets": w.Dropdown(description="LoRA targets", options=list(TARGETS), **_wide()),
        }
        self.readout = w.HTML()
        self.train_button = w.Button(description="Train", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.status = w.HTML()
        self.chart = chart_image()
        c["preset"].observe(lambda ch: self.load_preset(ch["new"]), names="value")
        for name, widget in c.items():
            if name != "preset":
                widget.observe(lambda _: self._changed(), names="value")
        self.train_button.on_click(lambda _: self.train())
        self.stop_button.on_click(lambda _: self.stop())
        controls = list(c.values())
        half = (len(controls) + 1) // 2
        self.widget = w.VBox([
            w.HBox([w.VBox(controls[:half]), w.VBox(controls[half:])]),
            self.readout, w.HBox([self.train_button, self.stop_button]), self.status, self.chart])
        self.assessment = Assessment(ok=False)
        self.load_preset(preset)
        watch(runs_root, self._attach)  # a run another panel of this kernel starts shows here too
        running = active_job(runs_root)
        if running is not None:  # this cell was re-run while its run trains: take the run over
            self._attach(running)

    # ------------------------------------------------------------------ state <-> widgets
    @property
    def base(self) -> dict[str, Any]:
        """The overrides under the widgets for the selected preset."""
        b = self._base(self.controls["preset"].value) if callable(self._base) else self._base
        return dict(b or {})

    @property
    def state(self) -> dict[str, Any]:
        """The widget values as ``mapping`` state (disabled widgets -> None: the model has no such field)."""
        return {name: (None if widget.disabled and name != "preset" else widget.value)
                for name, widget in self.controls.items()}

    def load_preset(self, preset: str) -> None:
        """Set every widget from a preset (widgets for fields its model lacks are disabled and hidden)."""
        if self.controls["preset"].value != preset:
            self.controls["preset"].value = preset  # its observer calls back here
            return
        cfg = config_from_state({"preset": preset}, self.base)
        state, tips = state_from_config(cfg, preset), tooltips(cfg)
        self._loading = True  # one assessment after all widgets moved, not one per widget
        try:
            for name, value in state.items():
                widget = self.controls[name]
                widget.tooltip = tips.get(name, widget.tooltip)
                # None: the model has no such field; "auto" devices: leave it to the config.
                unset = value is None or (name == "devices" and not isinstance(value, int))
                widget.disabled = unset and name != "preset"
                if name in HIDDEN_WHEN_ABSENT:
                    widget.layout.display = "none" if value is None else None
                if name == "hidden":
                    widget.description = "hidden width" if isinstance(value, int) else "hidden layers"
                if unset:
                    continue
                _widen(widget, value)
                widget.value = self._widget_value(name, value)
        finally:
            self._loading = False
        self._changed()

    def set(self, **values: Any) -> Assessment:
        """Move widgets from code (``panel.set(n_head=3)``) and return the new assessment."""
        self._loading = True
        try:
            for name, value in values.items():
                self.controls[name].value = self._widget_value(name, value)
        finally:
            self._loading = False
        return self._changed()

    @staticmethod
    def _widget_value(name: str, value: Any) -> Any:
        """Hidden widths are typed as text: ``64, 32`` (an MLP's layers) or ``64`` (the CNN's one layer)."""
        if name == "hidden" and not isinstance(value, str):
            return str(value) if isinstance(value, int) else ", ".join(str(v) for v in value)
        return value

    def _changed(self) -> Assessment:
        if self._loading:
            return self.assessment
        self.assessment = a = assess(self.state, self.base, device=self.device)
        self.readout.value = self._readout_html(a)
        self._sync_buttons()
        return a

    @staticmethod
    def _readout_html(a: Assessment) -> str:
        params = "-" if a.params is None else f"{a.params:,}"
        if a.params and a.trainable is not None and a.trainable < a.params:  # LoRA: what trains, and its share
            params += f" &nbsp; <b>trainable</b> {a.trainable:,} ({a.trainable / a.params:.2%})"
        lr = f" &nbsp; <b>learning rate</b> {a.config.optimizer.lr:.4g}" if a.config is not None else ""
        figures = (f"<b>parameters</b> {params} &nbsp; <b>FLOPs/{a.unit[:-1]}</b> {human(a.flops_per_unit)}"
                   f" &nbsp; <b>memory/device</b> {human_bytes(a.memory_bytes)} of {human_bytes(a.device_memory)}{lr}")
        if not a.ok:
            return f"{figures if a.params else ''}<div style='color:#b00'>&#9888; {html.escape(a.reason)}</div>"
        return figures

    def _sync_buttons(self) -> None:
        running = self.job is not None and self.job.running
        self.train_button.disabled = running or not self.assessment.ok
        self.train_button.tooltip = "" if self.assessment.ok else self.assessment.reason
        self.stop_button.disabled = not running

    # ------------------------------------------------------------------ training
    def train(self) -> TrainJob | None:
        """Start ``lab.train.fit`` on the panel's config in a background thread (None when refused).

        Refused for an invalid config, and while a run trains into the same runs root in this
        kernel (this panel then shows that run, and its Stop stops it).
        """
        a = self._changed()
        if not a.ok or a.config is None or (self.job is not None and self.job.running):
            return None
        running = active_job(self.runs_root)
        if running is not None:
            self._attach(running, note="another panel of this kernel started it; ")
            return None
        self.feed = feed = LiveFeed(listener=self._on_point)
        job = TrainJob(a.config, self.runs_root, callbacks=[feed])
        self.job = job
        self._clear_chart(a.unit)
        self.status.value = f"training {html.escape(a.config.experiment)} for {a.config.trainer.max_steps} steps ..."
        try:
            job.start()  # tells the other panels (watch): they attach to it
        except LabError as e:  # another thread started one between the check above and here
            self.job, self.feed = None, None
            self.status.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            self._sync_buttons()
            return None
        job.add_done_callback(self._on_done)
        self._follow(job)
        self._sync_buttons()
        return job

    def _attach(self, job: TrainJob, note: str = "") -> None:
        """Show and control ``job``, a run this kernel is training (started by another panel)."""
        if job is self.job or not job.running:
            return
        self.job = job
        self.feed = next((cb for cb in job.callbacks if isinstance(cb, LiveFeed)), None)
        if self.feed is not None:
            self.feed.add_listener(self._on_point)
        self._clear_chart()
        self._draw()
        self.status.value = (f"{html.escape(note)}this panel follows {html.escape(job.describe())}, already training "
                             "in this kernel: Stop stops it; Train is back when it ends")
        job.add_done_callback(self._on_done)
        self._follow(job)
        self._sync_buttons()

    def _follow(self, job: TrainJob) -> None:
        """Redraw from the run's event files while it trains where the callback cannot reach (ddp_notebook)."""
        def poll() -> None:
            while not job.finished:
                time.sleep(self.poll_s)
                if self.job is not job or self.feed is None or self.feed.in_process:
                    return  # another run, or the live callback reaches this kernel: nothing to read
                path = job.run_path
                if path is not None and self.feed.read_events(path):
                    self._draw()

        threading.Thread(target=poll, name="lab-panel-events", daemon=True).start()

    def stop(self) -> None:
        """Ask the run to stop at the end of the current step (last.ckpt saved, run `interrupted`)."""
        if self.job is not None and self.job.running:
            self.job.stop()
            self.status.value = "stopping at the end of this step ..."

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the current run ends; return its Run (None if none was started)."""
        return self.job.wait(timeout) if self.job is not None else None

    @property
    def run(self) -> Any:
        return self.job.run if self.job is not None else None

    def _on_point(self, point: dict[str, float]) -> None:
        if self._throttle.ready():
            self._draw()

    def _clear_chart(self, unit: str | None = None) -> None:
        """An empty chart: the previous run's curves must not pass for the new run's."""
        self.chart.value = chart_png([], unit or self.assessment.unit, title="loss (waiting for the first steps)")

    def _draw(self) -> None:
        if self.feed is not None and self.feed.history:
            self.chart.value = chart_png(self.feed.history, self.feed.unit)

    def _on_done(self, job: TrainJob) -> None:
        if job is not self.job:
            return
        if self.feed is not None and not self.feed.in_process and job.run_path is not None:
            self.feed.read_events(job.run_path)  # trained in worker processes: the complete curves
        self._draw()
        if job.error is not None:
            self.status.value = (f"<span style='color:#b00'>failed: {html.escape(type(job.error).__name__)}: "
                                 f"{html.escape(str(job.error))}</span>")
        else:
            run = job.run
            where = html.escape(str(run.path)) if run is not None else "?"
            what = "stopped (interrupted; last.ckpt kept)" if job.interrupted else "completed"
            best = (run.summary.get("best") or {}).get("val/loss") if run is not None else None
            self.status.value = f"{what}: <code>{where}</code>" + (f", best val/loss {best:.4f}" if best else "")
        self._sync_buttons()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
