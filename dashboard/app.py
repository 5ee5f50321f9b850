"""The lab's dashboard: ``streamlit run dashboard/app.py`` (binds to 127.0.0.1, see .streamlit/config.toml).

Pages (``dashboard/pages/``): Runs, Compare, Run, Actions (background jobs), Environment. Each
is a thin view over ``lab.dashboard_data``, ``lab.jobs``, ``lab.evaluate``/``lab.compress`` and
``lab.env``; run folders named in the UI or the URL (``/Run?run=<exp>/<id>``,
``/Compare?runs=a,b``, ``/Actions?run=...``) resolve inside the runs root or are refused.
The runs folder is picked in the sidebar (default ``$LAB_RUNS_DIR`` or ``./runs``).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES = Path(__file__).resolve().parent / "pages"

if not st.get_option("server.address"):
    # Streamlit reads .streamlit/config.toml from the working directory only: started elsewhere,
    # the server listens on every interface. Say so rather than silently exposing the runs.
    st.sidebar.warning("This server may be reachable from other machines: start it from the repo root "
                       "(which has .streamlit/config.toml) or pass `--server.address 127.0.0.1`.")

st.navigation([
    st.Page(PAGES / "runs.py", title="Runs", icon=":material/table_rows:", default=True),
    st.Page(PAGES / "compare.py", title="Compare", icon=":material/compare_arrows:", url_path="Compare"),
    st.Page(PAGES / "run.py", title="Run", icon=":material/monitoring:", url_path="Run"),
    st.Page(PAGES / "actions.py", title="Actions", icon=":material/play_circle:", url_path="Actions"),
    st.Page(PAGES / "environment.py", title="Environment", icon=":material/memory:", url_path="Environment"),
]).run()
