"""One hyperparameter search (``lab sweep``): its trials, the optimization history, parameter
importances, parallel coordinates and the values each trial reported (where pruning shows).

URL: ``/Sweep?sweep=<experiment>/<name>``; without it the page opens on the first study. Only the
studies under the server's runs root are listed (``runs/<experiment>/sweeps/<name>/study.db``); a
name that is not one of them is refused. While trials run, the page refreshes itself every 5 s.
The data comes from ``lab.sweep_study`` and the charts from ``lab.sweep_charts`` (both tested on
their own); each trial's run opens on the Run page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402
from lab import sweep_charts  # noqa: E402  (common put the repo root on the path)
from lab import sweep_study as ss  # noqa: E402
from lab.errors import LabError  # noqa: E402

plain = common.plain
root = common.setup("Sweep")


@st.cache_data(show_spinner=False, max_entries=8)
def _sweeps(root: str, signature: tuple) -> list[dict]:
    return ss.list_sweeps(root)


@st.cache_data(show_spinner=False, max_entries=32)
def _view(path: str, signature: tuple) -> dict:
    return ss.view(ss.open_study(path))


sweeps = _sweeps(root, ss.signature(root))
if not sweeps:
    st.info(f"No sweeps under {plain(root)} yet: start one with `lab sweep --config gpt-nano --space space.yaml "
            "--trials 20` (see `lab sweep --help`).")
    st.stop()
names = [s["sweep"] for s in sweeps]
wanted = st.query_params.get("sweep", "")
if wanted and wanted not in names:
    st.error(plain(f"no sweep {wanted} under this runs folder: pick one of {', '.join(names)}"))
    st.stop()
name = st.selectbox("Sweep", names, index=names.index(wanted) if wanted else 0)
st.query_params["sweep"] = name
row = sweeps[names.index(name)]
if row.get("problem"):
    st.error(plain(f"{name} cannot be opened: {row['problem']}"))
    st.stop()


@st.fragment(run_every=5 if row.get("running") else None)
def study() -> None:
    signature = next((s for s in ss.signature(root) if s[0] == row["path"]), ())
    try:
        v = _view(row["path"], signature)
    except LabError as e:
        st.error(plain(e))
        return
    c, best = v["counts"], v["best"]
    cols = st.columns(5)
    cols[0].metric("finished", f"{c['complete'] + c['pruned']} / {v['target'] or '?'}")
    cols[1].metric("completed", c["complete"])
    cols[2].metric("pruned", c["pruned"])
    cols[3].metric("failed", c["fail"])
    cols[4].metric(plain(f"best {v['metric']}"), f"{best['value']:.4f}" if best else "-")
    if c["running"]:
        st.caption(f"{c['running']} trial(s) training · refreshing every 5 s")
    if best:
        st.caption(plain(f"best: trial {best['trial']}, run {best['run']} ({v['direction']} {v['metric']}); "
                         "train it again with:"))
        run = common.resolve(best["run"], root) if best["run"] else None
        if run is not None:
            st.code(common.dd.reproduce_command(run), language="bash")

    st.header("Trials")
    # A dataframe's cells are plain text: a trial's error (from an exception) cannot render as Markdown.
    st.dataframe(v["trials"], width="stretch", hide_index=True)

    charts = sweep_charts.charts(v)
    if not charts:
        st.info("No trial has finished yet: the charts appear with the first one.")
    for key in ("history", "intermediate", "importances", "parallel"):
        if key in charts:
            st.altair_chart(charts[key], width="stretch")
    if "importances" not in charts and c["complete"]:
        st.info("Parameter importances need two completed trials with different values.")


study()
