"""The lab's dashboard: ``lab dashboard [--runs_dir DIR] [--host 127.0.0.1] [--port 8501]``.

That command (``lab.dashboard_server``) starts ``streamlit run dashboard/app.py`` from any folder
with the safe settings as flags: listen on 127.0.0.1 unless ``--host`` says otherwise, headless,
no usage statistics, and the runs root fixed in ``$LAB_RUNS_DIR``. Started by hand
(``streamlit run dashboard/app.py`` from anywhere), ``dashboard/.streamlit/config.toml`` -- the
config Streamlit reads next to the app, whatever the working directory -- sets the same; a flag
or ``STREAMLIT_*`` variable that overrides it gets a warning in the sidebar.

Pages (``dashboard/pages/``): Runs, Compare, Run, Sweep (``lab sweep`` studies), Serve (``lab serve``
as a background job: health, a prompt, live metrics), Actions (background jobs), Environment. Each is a thin view over ``lab.dashboard_data``, ``lab.jobs``, ``lab.evaluate``/``lab.compress`` and
``lab.env``; run folders named in the UI or the URL (``/Run?run=<exp>/<id>``,
``/Compare?runs=a,b``, ``/Actions?run=...``) resolve inside the runs root or are refused. The
runs root is the server's (``$LAB_RUNS_DIR``, else ./runs): no page lets the browser change it.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"
LOOPBACK = ("127.0.0.1", "localhost", "::1")

address = st.get_option("server.address")
if address not in LOOPBACK:
    # Streamlit cannot rebind a running server (server.* options are read once at start), so an
    # override of the config (a flag, STREAMLIT_SERVER_ADDRESS) is only said, loudly.
    st.sidebar.warning(f"This server listens on {address or 'every interface'}: other machines may reach it. "
                       "Start it with `lab dashboard` (127.0.0.1 unless --host says otherwise).")
if st.get_option("browser.gatherUsageStats"):
    st.sidebar.warning("Streamlit's usage statistics are on: start the dashboard with `lab dashboard`.")

# No ":material/...:" icons: the browser fetches those from fonts.gstatic.com, and the dashboard
# makes no request beyond this server (tests/test_dashboard.py watches every one).
st.navigation([
    st.Page(PAGES / "runs.py", title="Runs", icon="📋", default=True),
    st.Page(PAGES / "compare.py", title="Compare", icon="📈", url_path="Compare"),
    st.Page(PAGES / "run.py", title="Run", icon="🔎", url_path="Run"),
    st.Page(PAGES / "sweep.py", title="Sweep", icon="🎯", url_path="Sweep"),
    st.Page(PAGES / "serve.py", title="Serve", icon="🛰️", url_path="Serve"),
    st.Page(PAGES / "actions.py", title="Actions", icon="▶️", url_path="Actions"),
    st.Page(PAGES / "environment.py", title="Environment", icon="🖥️", url_path="Environment"),
]).run()
