"""Start ``lab evaluate`` / ``compress`` / ``export`` / ``fit`` in the background and follow the jobs.

Jobs are subprocesses with their state on disk (``lab.jobs``): they survive a browser refresh or a
dashboard restart; clicking twice returns the job already running; a failed job shows its error.
URL: ``/Actions?run=<exp>/<id>`` preselects the run (else the newest readable one). Every job
runs against this server's fixed runs root (``--runs_dir`` is set by ``lab.jobs``, never by the
browser); commands and errors are shown as plain text.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import streamlit as st
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402
from lab import jobs  # noqa: E402
from lab.errors import LabError  # noqa: E402

plain, code = common.plain, common.code
root = common.setup("Actions")
rows = common.runs_table(root)
names = [r["run"] for r in rows]
wanted = common.wanted_run(root, names)


def launch(args: list[str], label: str) -> None:
    try:
        before = {j.id for j in jobs.list_jobs(root)}
        job = jobs.start(args, root, label=label)
    except LabError as e:
        st.error(plain(e))
        return
    if job.id in before:
        st.info(f"Already {job.state}: job {job.id} ({code(job.display_command)}), no duplicate started.")
    else:
        st.success(f"Started job {job.id}: {code(job.display_command)}")


if names:
    name = st.selectbox("Run", names, index=common.default_index(names, rows, wanted))
    st.query_params["run"] = name
    run = common.open_run(name, root, rows)
else:
    st.info(f"No runs under {plain(root)} yet: train one below.")
    run = None

if run is not None:
    from lab.compress import METHODS
    from lab.export import FORMATS

    c1, c2, c3 = st.columns(3)
    with c1:
        st.subheader("Evaluate")
        ckpt = st.selectbox("Checkpoint", ["best", "last"], key="ev-ckpt")
        split = st.selectbox("Split", ["test", "val"], key="ev-split")
        max_batches = st.number_input("Max batches (0 = all)", 0, 10_000, 0, key="ev-mb")
        repeats = st.number_input("Timing repeats", 1, 200, 20, key="ev-rep")
        if st.button("Evaluate", type="primary"):
            args = ["evaluate", run.name, "--ckpt", ckpt, "--split", split, "--repeats", str(repeats)]
            launch(args + (["--max_batches", str(max_batches)] if max_batches else []), f"evaluate {run.name}")
    with c2:
        st.subheader("Compress")
        method = st.selectbox("Method", [*METHODS, "all"], key="co-method")
        c_mb = st.number_input("Max batches (0 = all)", 0, 10_000, 0, key="co-mb")
        if st.button("Compress"):
            args = ["compress", run.name, "--method", method] + (["--max_batches", str(c_mb)] if c_mb else [])
            launch(args, f"compress {run.name} {method}")
    with c3:
        st.subheader("Export")
        fmt = st.selectbox("Format", list(FORMATS), key="ex-fmt")
        if st.button("Export"):
            launch(["export", run.name, "--format", fmt], f"export {run.name} {fmt}")

st.subheader("Train a new run from an edited config")
base = yaml.safe_dump(run.config, sort_keys=False) if run is not None else ""
text = st.text_area("config.yaml", value=base, height=260, key=f"fit-config-{run.name if run else ''}")
if st.button("Train"):
    try:
        launch(jobs.config_job_args(text, root), "fit (edited config)")
    except LabError as e:
        st.error(plain(f"config refused: {e}"))


def job_list() -> None:
    found = jobs.list_jobs(root)
    if not found:
        st.info("No jobs yet.")
        return
    now = time.time()
    for job in found:
        elapsed = job.elapsed(now)
        head = f"**{job.state}** · {code(job.display_command)} · {elapsed:.0f} s" if elapsed is not None else \
            f"**{job.state}** · {code(job.display_command)}"
        with st.container(border=True):
            st.markdown(f"{head} · job {plain(job.id)}")
            if job.state == "failed" and job.error:
                st.error(plain(job.error))  # whole, as plain text: a log can hold anything
            if job.active and st.button("Cancel", key=f"cancel-{job.id}"):
                jobs.cancel(job.id, root)
                st.rerun()
            log = jobs.tail(job, 15)
            if log:
                with st.expander("log", expanded=job.active or job.state == "failed"):
                    st.code(log, language="text")


st.subheader("Jobs")
active = any(j.active for j in jobs.list_jobs(root))
# Only the job list reruns on the timer, and only while a job is queued or running.
st.fragment(job_list, run_every=2 if active else None)()
