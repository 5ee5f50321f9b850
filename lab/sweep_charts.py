"""A sweep's study as Altair charts: the dashboard's Sweep page and notebook 04 draw the same ones.

    from lab import sweep_charts, sweep_study
    study = sweep_study.open_study("runs/gpt-nano/sweeps/lr")      # or sweep(...).study
    for name, chart in sweep_charts.charts(study).items():      # a study, or sweep_study.view(study)
        Image(sweep_charts.png(chart))                             # in Jupyter, offline (IPython.display.Image)

The charts are the lab's own, in Altair (already the dashboard's chart library), rather than
``optuna.visualization``'s: those need plotly, one more large dependency, and Plotly figures load
their JavaScript from a CDN in a notebook unless configured otherwise. Streamlit draws the charts
with the Vega it ships; a notebook gets them as PNGs from ``png`` (vl-convert: Vega's own renderer,
compiled into the wheel), because Altair 6's Vega-Lite 6 has no renderer in JupyterLab 4 and its
HTML fallback loads Vega from a CDN, which fails offline. The data comes from ``lab.sweep_study``
(tested there).
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

from lab import sweep_study as ss

STATE_COLORS = alt.Scale(domain=["complete", "pruned"], range=["#1f77b4", "#bbbbbb"])


def history_chart(rows: list[dict[str, Any]], metric: str) -> alt.Chart | None:
    """Each finished trial's value by trial number (pruned ones grey, at their last value), and the best so far."""
    if not rows:
        return None
    df = pd.DataFrame(rows)
    points = alt.Chart(df).mark_circle(size=70).encode(
        x=alt.X("trial:Q", title="trial"), y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("state:N", scale=STATE_COLORS, title="trial"), tooltip=["trial", "state", "value"])
    best = alt.Chart(df.dropna(subset=["best"])).mark_line(interpolate="step-after", color="#d62728").encode(
        x="trial:Q", y="best:Q", tooltip=["trial", "best"])
    return (points + best).properties(title="Optimization history (line: best so far)", height=280)


def importance_chart(importances: dict[str, float]) -> alt.Chart | None:
    """Each parameter's share of the variance of the value (fANOVA), longest bar first."""
    if not importances:
        return None
    df = pd.DataFrame({"param": list(importances), "importance": list(importances.values())})
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("importance:Q", title="share of the variance"), y=alt.Y("param:N", sort="-x", title=None),
        tooltip=["param", alt.Tooltip("importance:Q", format=".3f")]).properties(
        title="Parameter importances (fANOVA, completed trials)", height=max(80, 30 * len(df)))


AXIS_WIDTH = 170
"""Pixels per parameter axis of the parallel-coordinates chart: room for a name like ``optimizer.weight_decay``."""


def parallel_chart(rows: list[dict[str, Any]], metric: str) -> alt.Chart | None:
    """One line per completed trial across one axis per parameter (0 = lowest value tried), coloured by its value."""
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df["position"] = df["position"].astype(float)
    order = list(dict.fromkeys(df["param"]))
    return alt.Chart(df).mark_line(point=True, opacity=0.7).encode(
        x=alt.X("param:N", sort=order, title=None, axis=alt.Axis(labelAngle=0, labelLimit=240)),
        y=alt.Y("position:Q", title="lowest → highest value tried", scale=alt.Scale(domain=[0, 1])),
        detail="trial:N", color=alt.Color("value:Q", title=metric, scale=alt.Scale(scheme="viridis")),
        tooltip=["trial", "param", "shown", "value"]).properties(
        # a wide band per axis: at Vega-Lite's default 20 px the dotted names overprint each other
        title="Parallel coordinates", height=300, width=alt.Step(AXIS_WIDTH))


def intermediate_chart(rows: list[dict[str, Any]], metric: str) -> alt.Chart | None:
    """The value each trial reported at each validation: pruned trials' lines end early."""
    if not rows:
        return None
    df = pd.DataFrame(rows)
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        detail="trial:N", color=alt.Color("state:N", title="trial"), tooltip=["trial", "state", "step", "value"]
    ).properties(title="Values at each validation (pruned trials stop early)", height=280)


def png(chart: alt.TopLevelMixin, scale: float = 1.5) -> bytes:
    """``chart`` drawn to PNG bytes without a browser or the web (vl-convert), for notebooks and files."""
    import vl_convert  # imported here: only notebooks and files need it, the dashboard does not

    return vl_convert.vegalite_to_png(chart.to_json(), scale=scale)


def charts(study: Any) -> dict[str, alt.Chart]:
    """Every chart that has data, by name: history, importances, parallel, intermediate.

    ``study``: an Optuna study, or its ``lab.sweep_study.view`` (what the dashboard caches).
    """
    v = study if isinstance(study, dict) else ss.view(study)
    made = {"history": history_chart(v["history"], v["metric"]),
            "importances": importance_chart(v["importances"]),
            "parallel": parallel_chart(v["parallel"], v["metric"]),
            "intermediate": intermediate_chart(v["intermediate"], v["metric"])}
    return {k: c for k, c in made.items() if c is not None}
