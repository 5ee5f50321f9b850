"""Compare runs: overlaid curves, config differences, final metrics, hyperparameter vs metric.

URL: ``/Compare?runs=<exp>/<id>,<exp>/<id>`` preselects runs (names outside the runs root are refused);
without it the page opens on the newest readable run. Values from run files are shown as text.
"""

from __future__ import annotations

import sys
from pathlib import Path
import altair as alt
import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402

dd = common.dd
root = common.setup("Compare")
rows = common.runs_table(root)
names = [r["run"] for r in rows]
if not names:
    st.info(f"No runs under {common.plain(root)} yet.")
    st.stop()

wanted = [common.canonical(n, root, names) for n in common.query_list("runs")]  # refused ones: error shown
wanted = list(dict.fromkeys(n for n in wanted if n))
bad = {r["run"] for r in rows if r.get("problem")}
default = wanted or [n for n in names if n not in bad][:2]  # never a run that cannot be read
picked = st.multiselect("Runs", names, default=default)
st.query_params["runs"] = ",".join(picked)
runs = [r for r in (common.open_run(n, root, rows) for n in picked) if r is not None]
if len(runs) < 1:
    st.info("Pick runs to compare.")
    st.stop()

st.header("Curves")
common.curve_charts(runs, key="compare")

st.header("Config")
only_diff = st.checkbox("Only the fields that differ", value=True)
table = dd.config_table(runs, only_diff=only_diff)
if not table:
    st.info("The configs are identical." if only_diff else "No config.")
else:
    df = dd.display_frame(table, "field")  # text cells: 8 stays 8 beside 0.05
    differs = df.pop("differs")
    styled = df.style.apply(
        lambda row: ["background-color: #fff3b0" if differs[row.name] else "" for _ in row], axis=1)
    st.dataframe(styled, width="stretch")

st.header("Final metrics")
metrics = dd.final_metrics(runs)
st.dataframe(dd.display_frame(metrics, "metric"), width="stretch")

st.header("Hyperparameter vs metric")
hparams = [row["field"] for row in dd.config_diff(runs) if row["field"] != "experiment"]
metric_names = [m["metric"] for m in metrics if all(isinstance(m[r.name], (int, float)) for r in runs)]
if len(runs) < 2 or not hparams or not metric_names:
    st.info("Pick runs whose configs differ (a sweep) to plot a hyperparameter against a metric.")
else:
    c1, c2 = st.columns(2)
    hp = c1.selectbox("Hyperparameter", hparams)
    default_metric = next((i for i, m in enumerate(metric_names) if m.startswith("best")), 0)
    metric = c2.selectbox("Metric", metric_names, index=default_metric)
    points = dd.hparam_points(runs, metric)
    # Generic column names: Altair reads "." in a field name (optimizer.lr) as nested access.
    labels = dd.run_labels([r.name for r in runs])
    df = pd.DataFrame({"run": [p["run"] for p in points], "label": [labels[p["run"]] for p in points],
                       "hparam": [p[hp] for p in points], "metric": [p[metric] for p in points]})
    numeric = pd.to_numeric(df["hparam"], errors="coerce").notna().all()
    if numeric:
        df["hparam"] = pd.to_numeric(df["hparam"])
    chart = alt.Chart(df).mark_circle(size=120).encode(
        x=alt.X(f"hparam:{'Q' if numeric else 'N'}", title=hp, **({"scale": alt.Scale(zero=False)} if numeric else {})),
        y=alt.Y("metric:Q", title=metric, scale=alt.Scale(zero=False)),
        color=alt.Color("label:N", title="run", legend=alt.Legend(labelLimit=480)),
        tooltip=["run", alt.Tooltip("hparam", title=hp), alt.Tooltip("metric", title=metric)])
    st.altair_chart(chart.properties(height=300), width="stretch")
