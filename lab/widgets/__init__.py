"""Notebook widgets: a hyperparameter panel that trains live, and a run comparer.

    from lab.widgets import HyperparameterPanel, RunComparer, workshop
    panel = HyperparameterPanel("gpt-nano", runs_root=workshop.runs_dir())
    panel                                  # tune; Train runs lab.train.fit in a thread; Stop ends it cleanly
    RunComparer(workshop.runs_dir())       # overlay curves of chosen runs (newest 20 listed, a filter for more)
    active_job(workshop.runs_dir())        # the run this kernel trains there: a re-run panel cell attaches to it

- ``mapping``: widget state <-> config, validation and planner estimates (no ipywidgets; unit-tested),
  and the training job (one per runs root in a kernel)
- ``live``: the Lightning callback feeding the live chart (or the run's event files, under ddp_notebook), and the chart
- ``panel``: the ipywidgets panel
- ``compare``: config differences and curve overlays, and the comparer widget
- ``workshop``: small mode (``LAB_NOTEBOOK_SMALL=1``) and where the notebooks' runs go
"""

from __future__ import annotations

from lab.widgets import workshop
from lab.widgets.compare import RunComparer, config_diff, overlay_png
from lab.widgets.live import LiveFeed, chart_png
from lab.widgets.mapping import FIELDS, Assessment, TrainJob, active_job, assess, config_from_state, state_from_config
from lab.widgets.panel import HyperparameterPanel

__all__ = ["FIELDS", "Assessment", "HyperparameterPanel", "LiveFeed", "RunComparer", "TrainJob", "active_job", "assess",
           "chart_png", "config_diff", "config_from_state", "overlay_png", "state_from_config", "workshop"]
