"""One run: status, config, curves, generated samples, evaluation and compression reports, artifacts.

URL: ``/Run?run=<exp>/<id>`` (a name outside the runs root, e.g. with ``..``, is refused). The page
opens on the newest readable run; while the run trains, its status, steps and best value
refresh themselves every 5 s (from the event files). Everything read from the run's files is
shown as plain text (``common.plain``, st.text, st.code, tables).
"""

from __future__ import annotations

import sys
from pathlib import Path
import pandas as pd
import streamlit as st
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402
from lab.errors import LabError  # noqa: E402  (common put the repo root on the path)
from lab import ranking  # noqa: E402
from lab.runs import load_run, status_note  # noqa: E402

dd = common.dd
plain = common.plain
root, run = common.pick_run("Run", ".")


def header(run) -> None:
    """Status, steps, best value, params, wall time; the failure and what to do about a stopped run."""
    s = run.summary
    row = dd.run_row(run)
    if s.get("status") == "running":
        row = {**row, **{k: v for k, v in common.progress(run.path).items() if v is not None}}
    c = st.columns(5)
    c[0].metric("status", run.status)
    c[1].metric("steps", f"{row['steps'] or 0} / {row['max steps'] or '?'}")
    c[2].metric(plain(row["best metric"] or "best"), f"{row['best value']:.4g}" if row["best value"] is not None else "-")
    c[3].metric("params", f"{row['params']:,}" if row["params"] else "-")
    c[4].metric("wall time", f"{row['wall time (s)']:.1f} s" if row["wall time (s)"] else "-")
    if row["from"]:
        st.caption(plain(f"started from {row['from']}"))
    if s.get("error"):
        st.error(plain(f"failed: {s['error']}"))
    if note := status_note(run):
        st.warning(plain(note))


# While the run trains only this part reruns, every 5 s, re-reading summary.json and the event
# files; when the run ends (or its process is found gone) the whole page reruns without a timer.
@st.fragment(run_every=5 if run.status == "running" else None)
def live_header() -> None:
    try:
        now = load_run(run.path) if run.status == "running" else run
    except LabError:
        now = run  # summary.json being replaced right now: the next tick reads it
    header(now)
    if run.status == "running" and now.status != "running":
        st.rerun()


live_header()
st.markdown("**Reproduce**")
st.code(dd.reproduce_command(run), language="bash")

tabs = st.tabs(["Curves", "Config", "Samples", "Evaluation", "Compression", "Artifacts"])
with tabs[0]:
    common.curve_charts([run], key="run")
with tabs[1]:
    st.code(yaml.safe_dump(run.config, sort_keys=False), language="yaml")
with tabs[2]:
    samples, pictures = dd.samples(run), dd.pictures(run)
    if not samples and not pictures:
        st.info("No generated samples or pictures (language models log samples at each validation, speech models "
                "a picture of their inputs).")
    for pic in pictures:
        st.image(pic["png"], caption=plain(f"{pic['tag']} · step {pic['step']}"))
    for smp in samples[:5]:
        st.caption(plain(f"step {smp['step']} · {smp['tag']}"))
        st.text(smp["text"])
with tabs[3]:
    reports = dd.eval_reports(run)
    if not reports:
        st.info(f"No evaluation yet: start one on the Actions page, or {common.code(f'lab evaluate {run.name}')}.")
    for rep in reports:
        from lab.evaluate import scalar_figures

        st.subheader(plain(f"eval-{rep['label']} ({rep['report'].get('split')} split)"))
        figures = scalar_figures(rep["report"])
        st.dataframe(pd.DataFrame({"figure": list(figures), "value": list(figures.values())}),
                     hide_index=True, width="stretch")
        if rep["png"] is not None:
            st.image(str(rep["png"]), caption="confusion matrix")
        if users := ranking.users_with_examples(rep["report"]["quality"]):  # a recommender's: per-user top-k
            user = st.selectbox("User", users, key=f"user-{rep['label']}")
            st.dataframe(pd.DataFrame(ranking.example_rows(rep["report"]["quality"], user)), hide_index=True,
                         width="stretch")
with tabs[4]:
    comp = dd.compression(run)
    if comp["comparison"]:
        st.dataframe(pd.DataFrame(comp["comparison"]["rows"]), hide_index=True, width="stretch")
        for method, err in comp["comparison"].get("errors", {}).items():
            st.warning(plain(f"{method}: {err}"))
    elif comp["methods"]:
        st.dataframe(pd.DataFrame(dd.method_rows(comp["methods"])), hide_index=True, width="stretch")
    else:
        st.info(f"Not compressed yet: {common.code(f'lab compress {run.name} --method all')}, or the Actions page.")
    if comp["pareto_png"] is not None:
        st.image(str(comp["pareto_png"]), caption="size and latency vs quality (Pareto front marked)")
with tabs[5]:
    files = dd.artifacts(run)
    st.caption(plain(f"{len(files)} files, {sum(f['bytes'] for f in files) / 2**20:.2f} MiB in {run.path}"))
    st.dataframe(pd.DataFrame(files), hide_index=True, width="stretch")


# ------------------------------------------------------------------ Explain: a thin view over lab.explain
@st.cache_resource(show_spinner=False, max_entries=4)
def _explainer(path: str, signature: tuple):
    from lab import explain

    return explain.load(load_run(path))  # the model, tokenizer and test data, kept between clicks


def explain_section(run) -> None:
    """Pick a test sample (or type a text for a text model), then see its heatmap, attention maps and logit lens."""
    from lab import explain

    st.subheader("Explain")
    spec = explain.supports(run)
    if spec is None or not run.checkpoint("best").is_file():
        st.info("Nothing to explain here: the run has no best checkpoint, or its model family declares no "
                "explanation method.")
        return
    st.caption(plain(f"{', '.join(spec.methods)} · the same pictures with `lab explain {run.name}` (written to "
                     "reports/explain/ and TensorBoard)"))
    text, index = None, 0
    if spec.inputs == "tokens" and st.radio("Input", ["type a text", "a test sample"], horizontal=True,
                                            key="explain-kind") == "type a text":
        text = st.text_input("Text (a language model's prompt)", value="The ", key="explain-text")
    else:
        index = int(st.number_input("Test sample", min_value=0, value=0, step=1, key="explain-index"))
    if st.button("Explain", key="explain-go"):
        ckpt = run.checkpoint("best").stat()
        try:
            loaded = _explainer(str(run.path), (ckpt.st_size, ckpt.st_mtime_ns))
            st.session_state["explained"] = (run.name, explain.explain(loaded, index=None if text is not None else index,
                                                                       text=text, write=False))
        except LabError as e:
            st.error(plain(str(e)))
            return
    shown = st.session_state.get("explained")
    if not shown or shown[0] != run.name:
        return
    result = shown[1]
    st.markdown(plain(f"{result.headline()}; likeliest: " + ", ".join(f"{n!r} {p:.3f}" for n, p in result.top)))
    captions = {"attributions": "attribution heatmaps (red: for the explained output, blue: against it)",
                "attention": "attention weights per layer and head", "logit-lens": "logit lens"}
    for name, png in result.pictures.items():
        st.image(png, caption=captions.get(name, name))
    if result.lens is not None:
        st.markdown("**Logit lens** (what each layer predicts next)")
        st.dataframe(pd.DataFrame(explain.lens_rows(result.lens)), hide_index=True, width="stretch")


explain_section(run)
