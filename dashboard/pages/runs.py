"""The Runs page: every run under the runs folder, filterable, sortable (click a column header),
searchable; the table refreshes itself every 5 s while a run is training, every 30 s otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402

root = common.setup("Runs")
rows = common.runs_table(root)
if not rows:
    st.info(f"No runs under {root} yet: run `lab quickstart`, or start a training on the Actions page.")
    st.stop()

c1, c2, c3 = st.columns([3, 2, 2])
search = c1.text_input("Search", placeholder="run name, model or status", key="runs-search")
statuses = c2.multiselect("Status", sorted({r["status"] for r in rows}), key="runs-status")
experiments = c3.multiselect("Experiment", sorted({r["experiment"] for r in rows}), key="runs-exp")


# Only the table reruns on the timer (a fragment): every 5 s while a run is training (training
# rewrites summary.json, the signature changes and the cached table reloads), every 30 s
# otherwise, so a run started elsewhere shows up without a reload (a signature costs a few ms).
@st.fragment(run_every=5 if common.dd.any_active(rows) else 30)
def table() -> None:
    current = common.runs_table(root)
    if common.dd.any_active(rows) != common.dd.any_active(current):
        st.rerun()  # a run started, or the last one ended (or crashed): rebuild with the other timer
    shown = common.dd.filter_rows(current, search, statuses, experiments)
    st.caption(f"{len(shown)} of {len(current)} runs · open one on the Run page, compare several on the Compare page"
               + (" · refreshing every 5 s while a run is training" if common.dd.any_active(current) else ""))
    df = common.frame(shown)
    if not df.empty:
        df = df.drop(columns=["error"])
    st.dataframe(df, width="stretch", hide_index=True,
                 column_config={"wall time (s)": st.column_config.NumberColumn(format="%.1f"),
                                "throughput": st.column_config.NumberColumn(format="%.0f")})
    for r in [r for r in shown if r["status"] == "failed" and r.get("error")][:5]:
        st.warning(f"{r['run']} failed: {r['error']}")


table()
