"""One run: status, config, curves, generated samples, evaluation and compression reports, artifacts.

URL: ``/Run?run=<exp>/<id>`` (a name outside the runs root, e.g. with ``..``, is refused).
"""

from __future__ import annotations

import sys
from pathlib import Path
import pandas as pd
import streamlit as st
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402
from lab.runs import status_note  # noqa: E402  (common put the repo root on the path)

dd = common.dd
root = common.setup("Run")
rows = common.runs_table(root)
names = [r["run"] for r in rows]
wanted = common.wanted_run(root, names)
if not names:
    st.info(f"No runs under {root} yet.")
    st.stop()
name = st.selectbox("Run", names, index=names.index(wanted) if wanted in names else 0)
st.query_params["run"] = name
run = common.resolve(name, root)
if run is None:
    st.stop()

s = run.summary
row = dd.run_row(run)
c = st.columns(5)
c[0].metric("status", run.status)
c[1].metric("steps", f"{row['steps'] or 0} / {row['max steps'] or '?'}")
c[2].metric(row["best metric"] or "best", f"{row['best value']:.4g}" if row["best value"] is not None else "-")
c[3].metric("params", f"{row['params']:,}" if row["params"] else "-")
c[4].metric("wall time", f"{row['wall time (s)']:.1f} s" if row["wall time (s)"] else "-")
if s.get("error"):
    st.error(f"failed: {s['error']}")
if note := status_note(run):
    st.warning(note)
st.markdown("**Reproduce**")
st.code(dd.reproduce_command(run), language="bash")

tabs = st.tabs(["Curves", "Config", "Samples", "Evaluation", "Compression", "Artifacts"])
with tabs[0]:
    common.curve_charts([run], key="run")
with tabs[1]:
    st.code(yaml.safe_dump(run.config, sort_keys=False), language="yaml")
with tabs[2]:
    samples = dd.samples(run)
    if not samples:
        st.info("No generated samples (language-model runs log some at each validation).")
    for smp in samples[:5]:
        st.markdown(f"step {smp['step']} · `{smp['tag']}`")
        st.text(smp["text"])
with tabs[3]:
    reports = dd.eval_reports(run)
    if not reports:
        st.info(f"No evaluation yet: start one on the Actions page, or `lab evaluate {run.name}`.")
    for rep in reports:
        from lab.evaluate import scalar_figures

        st.subheader(f"eval-{rep['label']} ({rep['report'].get('split')} split)")
        figures = scalar_figures(rep["report"])
        st.dataframe(pd.DataFrame({"figure": list(figures), "value": list(figures.values())}),
                     hide_index=True, width="stretch")
        if rep["png"] is not None:
            st.image(str(rep["png"]), caption="confusion matrix")
with tabs[4]:
    comp = dd.compression(run)
    if comp["comparison"]:
        st.dataframe(pd.DataFrame(comp["comparison"]["rows"]), hide_index=True, width="stretch")
        for method, err in comp["comparison"].get("errors", {}).items():
            st.warning(f"{method}: {err}")
    elif comp["methods"]:
        st.dataframe(pd.DataFrame(dd.method_rows(comp["methods"])), hide_index=True, width="stretch")
    else:
        st.info(f"Not compressed yet: `lab compress {run.name} --method all`, or the Actions page.")
    if comp["pareto_png"] is not None:
        st.image(str(comp["pareto_png"]), caption="size and latency vs quality (Pareto front marked)")
with tabs[5]:
    files = dd.artifacts(run)
    st.caption(f"{len(files)} files, {sum(f['bytes'] for f in files) / 2**20:.2f} MiB in {run.path}")
    st.dataframe(pd.DataFrame(files), hide_index=True, width="stretch")
