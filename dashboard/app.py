"""The lab's dashboard: ``streamlit run dashboard/app.py`` (binds to 127.0.0.1, see .streamlit/config.toml).

A thin view over ``lab.runs``: every page calls a tested ``lab`` function. This first page
lists the runs; comparing runs and triggering evaluation/compression come with their issues.
"""

from __future__ import annotations

import os

import streamlit as st

from lab.runs import list_runs, runs_root

st.set_page_config(page_title="Large Model Lab", layout="wide")
st.title("Large Model Lab — runs")
root = st.sidebar.text_input("Runs folder", value=str(runs_root(os.environ.get("LAB_RUNS_DIR"))))
rows = [
    {
        "run": r.name,
        "status": r.status,
        "model": r.summary.get("model", {}).get("name"),
        "params": r.summary.get("model", {}).get("params"),
        "steps": r.summary.get("step"),
        "best val/loss": r.summary.get("best", {}).get("val/loss"),
        "wall time (s)": r.summary.get("wall_time_s"),
        "started": r.summary.get("started_at"),
    }
    for r in reversed(list_runs(root))
]
if rows:
    st.dataframe(rows, use_container_width=True)
else:
    st.info(f"No runs under {root} yet: run `lab quickstart`.")
