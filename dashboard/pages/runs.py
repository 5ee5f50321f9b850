"""The Runs page: every run under the runs folder, filterable, sortable (click a column header),
searchable; the table refreshes itself every 5 s while a run is training (with its live step and
best value from the event files), every 30 s otherwise. A run folder that cannot be read, or that
links outside the runs root, is one row with status ``unreadable`` and the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402

dd = common.dd
root = common.setup("Runs")
rows = common.runs_table(root)
if not rows:
    st.info(f"No runs under {common.plain(root)} yet: run `lab quickstart`, or start a training on the Actions page.")
    st.stop()

c1, c2, c3 = st.columns([3, 2, 2])
search = c1.text_input("Search", placeholder="run name, model or status", key="runs-search")
statuses = c2.multiselect("Status", sorted({r["status"] for r in rows}), key="runs-status")
experiments = c3.multiselect("Experiment", sorted({r["experiment"] for r in rows}), key="runs-exp")


# Only the table reruns on the timer (a fragment): every 5 s while a run is training (its event
# files grow: live steps and best value), every 30 s otherwise, so a run started elsewhere
# shows up without a reload (a signature costs a few ms).
@st.fragment(run_every=5 if dd.any_active(rows) else 30)
def table() -> None:
    current = common.runs_table(root)
    if dd.any_active(rows) != dd.any_active(current):
        st.rerun()  # a run started, or the last one ended (or crashed): rebuild with the other timer
    shown = dd.filter_rows(current, search, statuses, experiments)
    st.caption(f"{len(shown)} of {len(current)} runs · open one on the Run page, compare several on the Compare page"
               + (" · refreshing every 5 s while a run is training" if dd.any_active(current) else ""))
    df = dd.runs_frame(shown)
    if not df.empty:
        # Cells of a dataframe are plain text: a run's own words (error, problem) cannot render as Markdown.
        df = df.drop(columns=["error"] + ([] if df["problem"].notna().any() else ["problem"]))
        # The reason a run cannot be read goes beside its status, not off to the right.
        df = df[[c for c in ("run", "experiment", "status", "problem") if c in df.columns] +
                [c for c in df.columns if c not in ("run", "experiment", "status", "problem")]]
    st.dataframe(df, width="stretch", hide_index=True,
                 column_config={"problem": st.column_config.TextColumn(width="medium"),  # whole below the table
                                "wall time (s)": st.column_config.NumberColumn(format="%.1f"),
                                "throughput": st.column_config.NumberColumn(format="%.0f")})
    for r in [r for r in shown if r["status"] == "failed" and r.get("error")][:5]:
        st.warning(common.plain(f"{r['run']} failed: {r['error']}"))
    for r in [r for r in shown if r.get("problem")][:10]:
        st.warning(common.plain(f"{r['run']}: {r['problem']}"))


table()
