"""Serve a run: ``lab serve RUN --port P`` as a background job, its /health, a prompt to try, live metrics.

URL: ``/Serve?run=<exp>/<id>`` (else the newest readable run). Start runs the server as a job
(``lab.jobs``: it outlives a browser refresh or a dashboard restart, and shows on the Actions page
too) on 127.0.0.1, on the port asked for or a free one; a second click returns the server already
running for that run and artifact. While a server runs, its state and metrics refresh every 2 s.
A language model gets a prompt box (``POST /v1/completions``); other families a ``/predict`` hint.
The logic lives in ``lab.serve.client`` (tested on its own); this page only shows it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402
from lab import jobs  # noqa: E402  (common put the repo root on the path)
from lab.errors import LabError  # noqa: E402
from lab.serve import client, scrape  # noqa: E402

plain, code = common.plain, common.code
root, run = common.pick_run("Serve", ": train one, then serve it here.")

is_lm = client.generates(run)
available = client.artifacts(run)
if not available:
    st.info(f"Nothing to serve: {plain(run.name)} has no best checkpoint yet.")
    st.stop()
st.caption(plain(f"The same from a terminal: lab serve {run.name} --port 8000 · "
                 + ("OpenAI-compatible POST /v1/completions" if is_lm else "POST /predict")
                 + " · GET /health, /metrics · listens on 127.0.0.1 only"))

c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
artifact = c1.selectbox("Artifact", available, key="serve-artifact",
                        help="fp32: the run's best checkpoint; the others are made by `lab compress` (Actions page)")
port = int(c2.number_input("Port (0 = any free one)", min_value=0, max_value=65535, value=0, key="serve-port"))
if c3.button("Start server", type="primary", key="serve-start"):
    try:
        job, started = client.start_job(run.name, root, artifact, port or None)
    except LabError as e:
        st.error(plain(e))
    else:
        if started:
            st.success(f"Started server job {plain(job.id)}: {code(job.display_command)}")
        else:
            st.info(f"Already {job.state}: {code(job.display_command)}, no second server started.")


def servers_view() -> None:
    """Each server of this run: its job, /health, Stop, metrics, and its log when it is not serving."""
    found = client.servers(root, run.name)
    seen = st.session_state.setdefault("serve-health", {})
    if not found:
        st.info("No server running for this run: start one above.")
        failed = client.last_failure(root, run.name)
        if failed is not None:
            st.error(plain(f"the last server ({failed.display_command}) failed: {failed.error}"))
    for s in found:
        job, h = s["job"], client.health(s["url"])
        with st.container(border=True):
            st.markdown(f"**{plain(h['status'])}** · {code(job.display_command)} · {plain(s['url'])} · "
                        f"job {plain(job.id)}")
            if st.button("Stop", key=f"serve-stop-{job.id}"):
                client.stop_job(job.id, root)
                st.rerun()
            if h["status"] == "ok":
                try:
                    st.dataframe(pd.DataFrame(client.summary(scrape(s["url"]))), hide_index=True)
                except OSError as e:
                    st.warning(plain(f"/metrics did not answer: {e}"))
            else:
                if h["status"] == "failed" and h.get("error"):
                    st.error(plain(h["error"]))
                log = jobs.tail(job, 10)
                if log:
                    st.code(log, language="text")
        if seen.get(job.id) != h["status"]:  # loading -> ok (or gone): the prompt box below follows
            changed = job.id in seen
            seen[job.id] = h["status"]
            if changed:
                st.rerun()


active = bool(client.servers(root, run.name))
st.subheader("Servers")
st.fragment(servers_view, run_every=2 if active else None)()

st.subheader("Try it")
ready = [s for s in client.servers(root, run.name) if client.health(s["url"])["status"] == "ok"]
if not is_lm:
    st.info(plain(f"{run.name} is not a language model: send it a sample with POST /predict, e.g. "
                  f"curl {ready[0]['url'] if ready else 'http://127.0.0.1:8000'}/predict -H 'Content-Type: "
                  "application/json' -d '{...}' (the body's fields are the family's: an error names them)."))
elif not ready:
    st.info("Start a server above; the prompt box appears when it is ready.")
else:
    urls = [s["url"] for s in ready]
    url = st.selectbox("Server", urls, key="serve-url") if len(urls) > 1 else urls[0]
    prompt = st.text_area("Prompt", value="The ", key="serve-prompt")
    p1, p2 = st.columns(2)
    max_tokens = int(p1.number_input("Max tokens", min_value=1, max_value=512, value=40, key="serve-max-tokens"))
    temperature = float(p2.number_input("Temperature (0 = greedy)", min_value=0.0, max_value=2.0, value=0.8,
                                        step=0.1, key="serve-temperature"))
    if st.button("Send", key="serve-send"):
        try:
            st.session_state["serve-answer"] = (run.name, prompt, client.complete(url, run.name, prompt, max_tokens,
                                                                                  temperature))
        except LabError as e:
            st.error(plain(e))
    shown = st.session_state.get("serve-answer")
    if shown and shown[0] == run.name:
        _, asked, out = shown
        st.markdown("**Completion**")
        st.text(asked + out["text"])
        usage = out.get("usage", {})
        st.caption(plain(f"finish_reason {out['finish_reason']} · {usage.get('prompt_tokens', '?')} prompt + "
                         f"{usage.get('completion_tokens', '?')} completion tokens"))
