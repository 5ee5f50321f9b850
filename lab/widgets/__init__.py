"""Notebook widgets: a hyperparameter panel that trains live, and a run comparer.

    from lab.widgets import HyperparameterPanel, RunComparer, workshop
    panel = HyperparameterPanel("gpt-nano", runs_root=workshop.runs_dir())
    panel                                  # tune; Train runs lab.train.fit in a thread; Stop ends it cleanly
    RunComparer(workshop.runs_dir())       # overlay curves of chosen runs, see their config differences

- ``mapping``: widget state <-> config, validation and planner estimates (no ipywidgets; unit-tested)
- ``live``: the Lightning callback feeding the live chart, and the chart
- ``panel``: the ipywidgets panel
- ``compare``: config differences and curve overlays, and the comparer widget
- ``workshop``: small mode (``LAB_NOTEBOOK_SMALL=1``) and where the notebooks' runs go
"""

from __future__ import annotations

from lab.widgets import workshop
from lab.widgets.compare import RunComparer, config_diff, overlay_png
from lab.widgets.live import LiveFeed, chart_png
from lab.widgets.mapping import FIELDS, Assessment, TrainJob, assess, config_from_state, state_from_config
from lab.widgets.panel import HyperparameterPanel

__all__ = ["FIELDS", "Assessment", "HyperparameterPanel", "LiveFeed", "RunComparer", "TrainJob", "assess",
           "chart_png", "config_diff", "config_from_state", "overlay_png", "state_from_config", "workshop"]
