"""Compare runs: overlay their curves and show where their configs differ.

    from lab.widgets.compare import config_diff, overlay_png, RunComparer
    diff = config_diff(["gpt-nano/20261129-0501-ab12", "gpt-nano/20261129-0502-cd34"])
    diff["optimizer.lr"]             # [0.002, 0.0005]: one value per run, only keys that differ
    RunComparer()                    # in a notebook: pick runs, choose a curve, see both
    pickable(root, limit=20, text="vit")   # what its list offers: readable runs, newest first, filtered
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Iterable

from lab import runs
from lab.config import config_diff as configs_diff


def _load(items: Iterable[runs.Run | str | Path], root: Any = None) -> list[runs.Run]:
    return [r if isinstance(r, runs.Run) else runs.resolve_run(r, root) for r in items]


def config_diff(items: Iterable[runs.Run | str | Path], root: Any = None) -> dict[str, list[Any]]:
    """Dotted config keys whose values differ between the runs -> one value per run (None = absent)."""
    return configs_diff([r.config for r in _load(items, root)])


def common_tags(items: Iterable[runs.Run | str | Path], root: Any = None) -> list[str]:
    """Scalar tags every run has (train/loss, val/loss, perf/..._per_sec, ...), sorted."""
    curves = [set(runs.scalars(r)) for r in _load(items, root)]
    return sorted(set.intersection(*curves)) if curves else []


def overlay_png(items: Iterable[runs.Run | str | Path], tag: str = "train/loss", root: Any = None) -> bytes:
    """One curve per run for ``tag`` on shared axes, as PNG bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=80)
    ax = fig.subplots()
    for r in _load(items, root):
        pts = runs.scalars(r).get(tag, [])
        ax.plot([s for s, _, _ in pts], [v for _, _, v in pts], marker="." if len(pts) < 30 else None, label=r.name)
    ax.set(xlabel="step", ylabel=tag, title=tag)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def diff_html(diff: dict[str, list[Any]], names: list[str]) -> str:
    """The config differences as an HTML table (escaped: run names and values are user data)."""
    if not diff:
        return "<i>the selected runs have identical configs</i>" if len(names) > 1 else "<i>pick two or more runs</i>"
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td>" + "".join(f"<td>{html.escape(repr(v))}</td>" for v in vals)
                   + "</tr>" for k, vals in diff.items())
    return f"<table><tr><th>config key</th>{head}</tr>{rows}</table>"


LIST_LIMIT = 20
"""Runs the comparer lists at once: a workshop makes 50+, and a list that long hides the new ones."""


def pickable(root: Any = None, limit: int = LIST_LIMIT, text: str = "") -> tuple[list[str], int]:
    """(names of the newest ``limit`` readable runs whose name contains ``text``, newest first; how many matched)."""
    needle = text.strip().lower()
    names = [r.name for r in reversed(runs.list_runs(root)) if r.problem is None and needle in r.name.lower()]
    return names[:limit], len(names)


class RunComparer:
    """A run picker: select runs, choose a curve; the overlay and the config differences update.

        c = RunComparer(); c            # display it (the last expression of a cell)
        c.select(["gpt-nano/...", "gpt-nano/..."]); c.tag.value = "val/loss"   # or drive it from code
        c.filter.value = "digits"       # list only runs whose name contains it (the newest ``limit`` of them)
    """

    def __init__(self, root: Any = None, tag: str = "train/loss", limit: int = LIST_LIMIT) -> None:
        import ipywidgets as w

        from lab.widgets.live import chart_image

        self.root, self.limit = root, limit
        self.picker = w.SelectMultiple(description="runs", rows=8, layout=w.Layout(width="420px"))
        self.filter = w.Text(description="filter", placeholder="part of a run name, e.g. gpt-nano",
                             layout=w.Layout(width="420px"))
        self.shown = w.HTML()
        self.tag = w.Dropdown(description="curve", options=[tag], value=tag)
        self.refresh_button = w.Button(description="refresh", icon="refresh")
        self.chart = chart_image()
        self.table = w.HTML()
        self.picker.observe(lambda _: self.update(), names="value")
        self.filter.observe(lambda _: self.refresh(), names="value")
        self.tag.observe(lambda _: self.update(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.widget = w.VBox([w.HBox([w.VBox([self.filter, self.picker, self.shown]),
                                      w.VBox([self.tag, self.refresh_button])]), self.chart, self.table])
        self.refresh()

    def refresh(self) -> None:
        """Re-read the runs folder (new runs appear at the top); runs already selected stay listed."""
        names, matched = pickable(self.root, self.limit, self.filter.value)
        keep = tuple(self.picker.value)
        self.picker.options = [*(n for n in keep if n not in names), *names]
        self.picker.value = keep  # a new options list clears the selection: put it back
        more = f" of {matched}: type in the filter to find older ones" if matched > len(names) else ""
        self.shown.value = f"<small>{len(names)} runs{more}, newest first</small>"

    def select(self, names: Iterable[str]) -> None:
        names = tuple(names)
        missing = [n for n in names if n not in self.picker.options]
        if missing:  # older than the list shows: add them (they must exist)
            _load(missing, self.root)
            keep = tuple(self.picker.value)
            self.picker.options = [*missing, *self.picker.options]
            self.picker.value = keep
        self.picker.value = names

    def update(self) -> None:
        names = list(self.picker.value)
        if not names:
            self.table.value = diff_html({}, [])
            self.chart.value = b""  # hidden, not the last selection's curves
            return
        tags = common_tags(names, self.root) or ["train/loss"]
        if list(self.tag.options) != tags:
            keep = self.tag.value if self.tag.value in tags else ("train/loss" if "train/loss" in tags else tags[0])
            self.tag.options, self.tag.value = tags, keep
        self.chart.value = overlay_png(names, self.tag.value, self.root)
        self.table.value = diff_html(config_diff(names, self.root), names)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
