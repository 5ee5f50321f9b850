"""What every dashboard page shares: page setup, the fixed runs root, cached loaders, charts.

    import common
    root = common.setup("Compare")           # page config; the runs root, shown read-only
    rows = common.runs_table(root)           # cached until a summary.json/config.yaml changes
    st.error(common.plain(text_from_a_run))  # anything read from run files: never Markdown

The runs root is fixed when the server starts (``lab dashboard --runs_dir DIR`` or
``$LAB_RUNS_DIR``): the browser chooses among runs, never among folders.

Only Streamlit glue lives here; the data comes from ``lab.dashboard_data`` (tested on its own).
Every cached loader takes a *signature* (file mtimes and sizes) as an argument, so
``st.cache_data`` recomputes exactly when the files behind a result change.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import altair as alt
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `lab` from this tree, installed or not

from lab import dashboard_data as dd  # noqa: E402
from lab.errors import LabError  # noqa: E402
from lab.runs import Run, load_run, runs_root  # noqa: E402
from lab.tfevents import event_files  # noqa: E402

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character
_AUTOLINK = re.compile(r"(?i)(:|@|www(?=\.))")
JOINER = "\u2060"
"""WORD JOINER: invisible, and no URL or e-mail address pattern matches across it."""


def plain(text: object) -> str:
    """``text`` escaped so Markdown shows it as written: for st.error/warning/info/markdown.

    Streamlit renders those as Markdown; a run's files (summary.json's error, a job's log, a
    report) could hold ``![x](http://host/pixel.png)``, which the browser would fetch, or a
    link. CommonMark lets a backslash escape every ASCII punctuation character, which leaves
    no link, image, emphasis, HTML or math to render. GitHub's bare-URL links
    (``http://...``, ``www.``, ``a@b.org``) are found in the text *after* escapes are undone,
    so an invisible ``JOINER`` after each ``:``, ``@`` and ``www`` breaks those patterns too.
    """
    return _PUNCTUATION.sub(r"\\\1", _AUTOLINK.sub(rf"\1{JOINER}", str(text)))


def code(text: object) -> str:
    """``text`` as inline code in Markdown, whatever backticks it holds (a fence longer than any run of them)."""
    text = " ".join(str(text).splitlines())  # a blank line would end the paragraph, and the span with it
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def root_dir() -> str:
    """The runs root of this server: ``$LAB_RUNS_DIR`` (``lab dashboard --runs_dir`` sets it) or ./runs."""
    return str(runs_root().absolute())


def setup(title: str) -> str:
    """Page config, title, and the runs root, shown read-only in the sidebar (no widget can change it)."""
    st.set_page_config(page_title=f"{title} · Large Model Lab", layout="wide")
    st.title(title)
    root = root_dir()
    st.sidebar.caption("Runs folder (fixed when the server started: `lab dashboard --runs_dir DIR`)")
    st.sidebar.text(root)
    return root


@st.cache_data(show_spinner=False, max_entries=16)
def _runs_table(root: str, signature: tuple) -> list[dict[str, Any]]:
    return dd.runs_table(root)


@st.cache_data(show_spinner=False, max_entries=64)
def _progress(path: str, signature: tuple) -> dict[str, Any]:
    return dd.live_progress(path)


def progress(path: Path | str) -> dict[str, Any]:
    """A running run's live steps and best value (``dd.live_progress``), cached until its event files grow."""
    return _progress(str(path), tuple((p.name, dd._stat(str(p))) for p in event_files(path)))


def runs_table(root: str) -> list[dict[str, Any]]:
    """The cached rows, with running runs re-checked (a killed one changes no file) and their live progress."""
    return dd.with_live_status(_runs_table(root, dd.runs_signature(root)), root, progress=progress)


@st.cache_data(show_spinner=False, max_entries=512)
def _resolve(root: str, name: str, signature: tuple) -> Run:
    return dd.resolve(name, root)


def resolve(name: str, root: str) -> Run | None:
    """The run, or None after showing why it was refused."""
    try:
        return _resolve(root, name, dd.runs_signature(root))
    except LabError as e:
        st.error(plain(e))
        return None


def open_run(name: str, root: str, rows: list[dict[str, Any]]) -> Run | None:
    """The run picked in a page, or None after showing, in one line, why it cannot be opened.

    A run the listing already found unreadable or refused is not read again: its row says why.
    """
    problem = dd.problem_of(name, rows)
    if problem:
        st.error(plain(f"{name} cannot be opened: {problem}"))
        return None
    return resolve(name, root)


def default_index(names: list[str], rows: list[dict[str, Any]], wanted: str = "") -> int:
    """The selectbox index a page opens on: the URL's run, else the newest readable one."""
    first = dd.first_readable(names, rows, [wanted] if wanted else [])
    return names.index(first[0]) if first else 0


def canonical(name: str, root: str, names: list[str]) -> str | None:
    """A run named in the URL (``<exp>/<id>``, a bare id, ``last``) as its table name; None (error shown) if refused."""
    if name in names:
        return name
    run = resolve(name, root)
    return run.name if run is not None and run.name in names else None


@st.cache_data(show_spinner=False, max_entries=512)
def _scalars(path: str, signature: tuple) -> dict[str, list[tuple[int, float, float]]]:
    return dd.scalars(load_run(path))


def scalars(run: Run) -> dict[str, list[tuple[int, float, float]]]:
    return _scalars(str(run.path), dd.run_signature(run))


def query_list(name: str) -> list[str]:
    """A comma-separated URL parameter (``?runs=a,b``) as a list."""
    value = st.query_params.get(name, "")
    return [v for v in value.split(",") if v]


def curve_charts(runs: list[Run], key: str, default_tags: tuple[str, ...] = ("train/loss", "val/loss")) -> None:
    """Tag picker, smoothing, x axis, log scale, and one overlaid line chart per tag."""
    data = {r.name: scalars(r) for r in runs}
    tags = dd.tag_order({t for sc in data.values() for t in sc})
    if not tags:
        st.info("No scalars logged yet.")
        return
    c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
    chosen = c1.multiselect("Curves", tags, default=[t for t in default_tags if t in tags] or tags[:1], key=f"{key}-tags")
    smoothing = c2.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key=f"{key}-smooth")
    x = c3.radio("x axis", dd.X_AXES, horizontal=True, key=f"{key}-x")
    log = c4.checkbox("log y", key=f"{key}-log")
    df = dd.curves(runs, chosen, x=x, smoothing=smoothing, data=data)
    if df.empty:
        st.info("None of the chosen curves has points.")
        return
    units = {dd.tokens_per_step(r)[1] for r in runs}
    # Short labels that differ (the id suffix), and room for them: Vega-Lite cuts labels at 160 px.
    color = alt.Color("label:N", title="run", legend=alt.Legend(labelLimit=480, orient="bottom", columns=2))
    x_title = {"step": "step", "wall time": "wall time (s)"}.get(x, " / ".join(sorted(units)))
    for tag in chosen:
        part = df[df["tag"] == tag]
        if part.empty:
            continue
        scale = alt.Scale(type="log") if log and (part["value"] > 0).all() else alt.Scale(zero=False)
        base = alt.Chart(part).encode(x=alt.X("x:Q", title=x_title), color=color)
        raw = base.mark_line(opacity=0.25).encode(y=alt.Y("value:Q", scale=scale, title=tag))
        smooth = base.mark_line().encode(y=alt.Y("smoothed:Q", scale=scale, title=tag),
                                         tooltip=["run", "step", "x", "value", "smoothed"])
        lone = base.transform_filter("datum.lone").mark_point(filled=True, size=70).encode(
            y=alt.Y("value:Q", scale=scale, title=tag), tooltip=["run", "step", "x", "value"])
        st.altair_chart((raw + smooth + lone).properties(title=tag, height=260), width="stretch")


def wanted_run(root: Any, names: list[str]) -> str:
    """The run named by the URL's ``?run=`` in canonical form, or ""; a refused name stops the page."""
    wanted = st.query_params.get("run", "")
    if wanted:
        wanted = canonical(wanted, root, names)  # shows why a name is refused (outside the root, no run)
        if wanted is None:
            st.stop()
    return wanted


def pick_run(title: str, empty: str) -> tuple[str, Run]:
    """A page about one run: set the page up, list the runs, offer them in a "Run" box (the URL's
    ``?run=`` first, kept in the URL) and open the chosen one -> ``(root, run)``. With no runs it shows
    ``empty`` and stops the page; a run that cannot be opened stops it after saying why."""
    root = setup(title)
    rows = runs_table(root)
    names = [r["run"] for r in rows]
    wanted = wanted_run(root, names)
    if not names:
        st.info(plain(f"No runs under {root} yet{empty}"))
        st.stop()
    name = st.selectbox("Run", names, index=default_index(names, rows, wanted))
    st.query_params["run"] = name
    run = open_run(name, root, rows)
    if run is None:
        st.stop()
    return root, run
