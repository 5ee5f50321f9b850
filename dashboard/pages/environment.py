"""The ``lab doctor`` report: versions, torch build, CPU, memory, disk, GPUs, and every check."""

from __future__ import annotations

import sys
from pathlib import Path
import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dashboard/, for `common`
import common  # noqa: E402

root = common.setup("Environment")


@st.cache_data(show_spinner="Probing this machine...", ttl=300)
def doctor(runs_dir: str) -> tuple[list[dict], str, int, dict]:
    from lab.env import report

    r = report(runs_dir)
    return ([{"status": c.status.upper(), "check": c.name, "detail": c.detail, "fix": c.fix} for c in r.checks],
            r.to_text(), r.exit_code, r.counts)


if st.button("Re-check"):
    doctor.clear()
checks, text, exit_code, counts = doctor(root)
summary = ", ".join(f"{n} {k}" for k, n in counts.items())
(st.error if exit_code else st.success)(f"lab doctor: {summary}")
st.dataframe(pd.DataFrame(checks), hide_index=True, width="stretch")
with st.expander("Full report (what `lab doctor` prints)"):
    st.code(text, language="text")
