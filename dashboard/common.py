"""What every dashboard page shares: page setup, the runs-root picker, cached loaders, charts.

    import common
    root = common.setup("Compare")           # page config + sidebar "Runs folder"
    rows = common.runs_table(root)           # cached until a summary.json/config.yaml changes

Only Streamlit glue lives here; the data comes from ``lab.dashboard_data`` (tested on its own).
Every cached loader takes a *signature* (file mtimes and sizes) as an argument, so
``st.cache_data`` recomputes exactly when the files behind a result change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `lab` from this tree, installed or not

from lab import dashboard_data as dd  # noqa: E402
from lab.errors import LabError  # noqa: E402
from lab.runs import Run, load_run, runs_root  # noqa: E402

ROOT_KEY = "_runs_root"


def setup(title: str) -> str:
    """Page config, title, and the sidebar's runs folder (kept across pages in the session)."""
    st.set_page_config(page_title=f"{title} · Large Model Lab", layout="wide")
    st.title(title)
    default = st.session_state.get(ROOT_KEY) or str(runs_root(os.environ.get("LAB_RUNS_DIR")))
    root = st.sidebar.text_input("Runs folder", value=default, help="default: $LAB_RUNS_DIR or ./runs")
    st.session_state[ROOT_KEY] = root
    return root


@st.cache_data(show_spinner=False, max_entries=16)
def _runs_table(root: str, signature: tuple) -> list[dict[str, Any]]:
    return dd.runs_table(root)


def runs_table(root: str) -> list[dict[str, Any]]:
    """The cached rows, with running runs re-checked (a killed one changes no file)."""
    return dd.with_live_status(_runs_table(root, dd.runs_signature(root)), root)


@st.cache_data(show_spinner=False, max_entries=512)
def _resolve(root: str, name: str, signature: tuple) -> Run:
    return dd.resolve(name, root)


def resolve(name: str, root: str) -> Run | None:
    """The run, or None after showing why it was refused."""
    try:
        return _resolve(root, name, dd.runs_signature(root))
    except LabError as e:
        st.error(str(e))
        return None


def canonical(name: str, root: str, names: list[str]) -> str | None:
    """A run named in the URL (``<exp>/<id>``, a bare id, ``last``) as its table name; None (error shown) if refused."""
    if name in names:
        return name
    run = resolve(name, root)
    return run.name if run is not None and run.name in names else None


@st.cache_data(show_spinner=False, max_entries=512)
def _scalars(path: str, signature: tuple) -> dict[str, list[tuple[int, float, float]]]:
    return dd.scalars(load_run(path))


def scalars(run: Run) -> dict[str, list[tuple[int, float, float]]]:
    return _scalars(str(run.path), dd.run_signature(run))


def query_list(name: str) -> list[str]:
    """A comma-separated URL parameter (``?runs=a,b``) as a list."""
    value = st.query_params.get(name, "")
    return [v for v in value.split(",") if v]


def curve_charts(runs: list[Run], key: str, default_tags: tuple[str, ...] = ("train/loss", "val/loss")) -> None:
    """Tag picker, smoothing, x axis, log scale, and one overlaid line chart per tag."""
    data = {r.name: scalars(r) for r in runs}
    tags = dd.tag_order({t for sc in data.values() for t in sc})
    if not tags:
        st.info("No scalars logged yet.")
        return
    c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
    chosen = c1.multiselect("Curves", tags, default=[t for t in default_tags if t in tags] or tags[:1], key=f"{key}-tags")
    smoothing = c2.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key=f"{key}-smooth")
    x = c3.radio("x axis", dd.X_AXES, horizontal=True, key=f"{key}-x")
    log = c4.checkbox("log y", key=f"{key}-log")
    df = dd.curves(runs, chosen, x=x, smoothing=smoothing, data=data)
    if df.empty:
        st.info("None of the chosen curves has points.")
        return
    units = {dd.tokens_per_step(r)[1] for r in runs}
    x_title = {"step": "step", "wall time": "wall time (s)"}.get(x, " / ".join(sorted(units)))
    for tag in chosen:
        part = df[df["tag"] == tag]
        if part.empty:
            continue
        scale = alt.Scale(type="log") if log and (part["value"] > 0).all() else alt.Scale(zero=False)
        base = alt.Chart(part).encode(x=alt.X("x:Q", title=x_title), color=alt.Color("run:N"))
        raw = base.mark_line(opacity=0.25).encode(y=alt.Y("value:Q", scale=scale, title=tag))
        smooth = base.mark_line().encode(y=alt.Y("smoothed:Q", scale=scale, title=tag),
                                         tooltip=["run", "step", "x", "value", "smoothed"])
        lone = base.transform_filter("datum.lone").mark_point(filled=True, size=70).encode(
            y=alt.Y("value:Q", scale=scale, title=tag), tooltip=["run", "step", "x", "value"])
        st.altair_chart((raw + smooth + lone).properties(title=tag, height=260), width="stretch")


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def wanted_run(root: Any, names: list[str]) -> str:
    """The run named by the URL's ``?run=`` in canonical form, or ""; a refused name stops the page."""
    wanted = st.query_params.get("run", "")
    if wanted:
        wanted = canonical(wanted, root, names)  # shows why a name is refused (outside the root, no run)
        if wanted is None:
            st.stop()
    return wanted
