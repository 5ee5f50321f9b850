"""What the dashboard shows, as plain data: every page is a thin view over these functions.

    from lab import dashboard_data as dd
    rows = dd.runs_table("runs")                          # one dict per run (Runs page)
    key = dd.runs_signature("runs")                       # changes when any summary/config changes
    run = dd.resolve("gpt-nano/20261128-120000-ab12", "runs")   # refuses names escaping the root
    rows = dd.with_live_status(rows, "runs")              # running runs: live status, steps, best so far
    df = dd.curves([run, other], ["train/loss"], x="tokens", smoothing=0.6)
    dd.config_diff([run, other])                          # only the fields that differ
    dd.final_metrics([run, other]); dd.run_details(run)

Caching: the pages wrap these in ``st.cache_data`` with a *signature* argument (modification
times and sizes of the files a result depends on), so a cached table is reused until a run
writes something, and never served stale.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from lab import runs as runs_mod
from lab.config import config_diff as config_changes
from lab.config import config_values
from lab.errors import LabError
from lab.families import family
from lab.runs import Run
from lab.tfevents import event_files, read_events

X_AXES = ("step", "tokens", "wall time")
STATUS_ORDER = ("running", "crashed", "failed", "interrupted", "completed", "unknown", runs_mod.UNREADABLE)
MIN_SMOOTH_POINTS = 5
"""Curves with fewer points are drawn raw: smoothing 2-3 validation points bends the line away
from the real last value."""
PROGRESS_TAG, BEST_TAG = "train/loss", "val/loss"
"""A running run's live progress: the last step of the training loss, the lowest validation
loss so far (what ``best.ckpt`` keeps and ``summary.json`` records at the end)."""
INT_COLUMNS = ("params", "steps", "max steps")


# --------------------------------------------------------------------------- signatures (cache keys)


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, -1


def runs_signature(root: str | Path | None) -> tuple:
    """(name, summary.json mtime/size, config.yaml mtime/size) for every run folder: a cheap cache key.

    ``os.scandir`` two levels deep and two ``stat`` calls per run: a few ms for 200 runs.
    """
    base = str(runs_mod.runs_root(root))
    out = []
    try:
        exps = sorted((e for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return ()
    for exp in exps:
        try:
            entries = sorted(os.scandir(exp.path), key=lambda e: e.name)
        except OSError:
            continue
        for d in entries:
            if d.is_dir():
                out.append((exp.name, d.name, _stat(os.path.join(d.path, runs_mod.SUMMARY)),
                            _stat(os.path.join(d.path, runs_mod.CONFIG))))
    return tuple(out)


def run_signature(run: Run | str | Path) -> tuple:
    """mtime/size of a run's summary, config, event files, reports and compressed artifacts."""
    path = Path(run.path if isinstance(run, Run) else run)
    parts: list[Any] = [_stat(str(path / runs_mod.SUMMARY)), _stat(str(path / runs_mod.CONFIG))]
    parts += [(p.name, _stat(str(p))) for p in event_files(path)]
    for sub in ("reports", "compressed", "export"):
        d = path / sub
        if d.is_dir():
            parts += [(str(p.relative_to(path)), _stat(str(p))) for p in sorted(d.rglob("*.json"))]
    return tuple(parts)


# --------------------------------------------------------------------------- Runs page


def _throughput(summary: dict[str, Any]) -> tuple[float | None, str | None]:
    for k, v in (summary.get("throughput") or {}).items():
        if k.endswith("_per_sec") and k != "flops_per_sec":
            return v, k.replace("_per_sec", "/s")
    return None, None


def run_row(run: Run) -> dict[str, Any]:
    """One row of the Runs table; a run that cannot be read has only its name, status and ``problem``."""
    s = run.summary
    best = s.get("best") or {}
    metric = next(iter(best), None)
    tput, unit = _throughput(s)
    return {
        "run": run.name, "experiment": run.experiment, "status": run.status,
        "model": (s.get("model") or {}).get("name") or (run.config.get("model") or {}).get("name"),
        "params": (s.get("model") or {}).get("params"),
        "steps": s.get("step"), "max steps": (run.config.get("trainer") or {}).get("max_steps"),
        "best metric": metric, "best value": best.get(metric) if metric else None,
        "wall time (s)": s.get("wall_time_s"), "throughput": tput, "throughput unit": unit,
        "started": s.get("started_at"), "from": runs_mod.lineage(run), "error": s.get("error"),
        "problem": run.problem,
    }


def runs_table(root: str | Path | None) -> list[dict[str, Any]]:
    """Every run under ``root``, newest first, as Runs-table rows."""
    return [run_row(r) for r in reversed(runs_mod.list_runs(root))]


def live_progress(run_dir: str | Path) -> dict[str, Any]:
    """A training run's progress from its event files: ``{"steps", "best metric", "best value"}``.

    summary.json gets the step and best value only when the run ends; the event files grow
    at every logged step. ``steps`` counts the optimizer steps done when the last training loss
    was logged: Lightning logs a step's loss under the number of steps done *before* it, so the
    last point's step + 1 (a resumed run's purged points are gone, ``lab.runs.scalars``).
    ``best value`` is the lowest validation loss so far. Values it cannot tell are None.
    """
    sc = runs_mod.scalars(run_dir)
    train, val = sc.get(PROGRESS_TAG) or [], sc.get(BEST_TAG) or []
    finite = [v for _, _, v in val if math.isfinite(v)]
    return {"steps": train[-1][0] + 1 if train else None, "best metric": BEST_TAG if finite else None,
            "best value": min(finite) if finite else None}


def merge_progress(row: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """``row`` with a running run's live progress: progress only grows, so the larger step count
    and the lower best value win (summary.json has none while a run trains, and a resumed run's
    are from before the resume). A best value has to beat the summary's by more than float32
    precision (event files store float32) to replace it."""
    out = dict(row)
    if live.get("steps") is not None:
        out["steps"] = max(live["steps"], row.get("steps") or 0)
    best, metric = live.get("best value"), live.get("best metric")
    if best is not None and row.get("best metric") in (None, metric):
        old = row.get("best value")
        if old is None or best < old - 1e-6 * abs(old):
            out["best metric"], out["best value"] = metric, best
    return out


def with_live_status(rows: list[dict[str, Any]], root: str | Path | None,
                     progress: Callable[[Path], dict[str, Any]] = live_progress) -> list[dict[str, Any]]:
    """``rows`` with each ``running`` one re-read: its status and its live progress.

    A killed run never writes summary.json again, so a table cached by file signatures would
    say ``running`` forever; this re-checks only those rows (``Run.status``, ``lab.procs``).
    While a run trains, its summary has no step or best value yet: ``progress`` (the event
    files, ``live_progress``; the dashboard passes a cached one) fills them in.
    """
    base = runs_mod.runs_root(root)
    out = []
    for r in rows:
        if r["status"] == "running":
            path = base / r["run"]
            try:  # summary.json alone: the status needs nothing else
                summary = json.loads((path / runs_mod.SUMMARY).read_text(encoding="utf-8"))
                r = {**r, "status": Run(path, summary=summary).status}
            except (OSError, ValueError):
                pass  # deleted or being rewritten meanwhile: the next signature change reloads the row
            r = merge_progress(r, progress(path))
        out.append(r)
    return out


def runs_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The Runs table as a DataFrame: counts stay integers (``30``, not ``30.0``) beside missing ones."""
    df = pd.DataFrame(list(rows))
    for col in INT_COLUMNS:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    return df


def first_readable(names: Sequence[str], rows: Sequence[dict[str, Any]], wanted: Iterable[str] = ()) -> list[str]:
    """The runs a page opens on: those ``wanted`` (the URL's), else the first readable run.

    A run that cannot be read (``problem``) is never the default: picked on purpose, the page
    shows why it cannot be opened.
    """
    chosen = [n for n in wanted if n in names]
    if chosen:
        return chosen
    bad = {r["run"] for r in rows if r.get("problem")}
    return [n for n in names if n not in bad][:1]


def problem_of(name: str, rows: Sequence[dict[str, Any]]) -> str | None:
    """Why the run ``name`` cannot be opened (its row's ``problem``), or None."""
    return next((r.get("problem") for r in rows if r["run"] == name), None)


def filter_rows(rows: Iterable[dict[str, Any]], search: str = "", statuses: Sequence[str] = (),
                experiments: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows whose status/experiment are among those chosen (empty = all) and whose name/model contain ``search``."""
    needle = search.strip().lower()
    out = []
    for r in rows:
        if statuses and r["status"] not in statuses:
            continue
        if experiments and r["experiment"] not in experiments:
            continue
        if needle and needle not in f"{r['run']} {r.get('model') or ''} {r['status']}".lower():
            continue
        out.append(r)
    return out


def any_active(rows: Iterable[dict[str, Any]]) -> bool:
    """True while a run is still training: the Runs page refreshes itself then."""
    return any(r["status"] == "running" for r in rows)


# --------------------------------------------------------------------------- resolving names from the UI / URL


def resolve(name: str, root: str | Path | None) -> Run:
    """A run named in the UI or the URL; ``LabError`` for empty names or ones outside the root."""
    if not name or not str(name).strip():
        raise LabError("no run given: pick one on the Runs page")
    return runs_mod.resolve_run(str(name).strip(), root)


def resolve_many(names: Iterable[str], root: str | Path | None) -> tuple[list[Run], list[str]]:
    """Resolve each name; returns the runs found and one error line per name refused."""
    found, errors = [], []
    for n in names:
        try:
            found.append(resolve(n, root))
        except LabError as e:
            errors.append(str(e))
    return found, errors


# --------------------------------------------------------------------------- curves


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: a debiased exponential moving average (weight 0 = raw, 0.99 = very smooth)."""
    if not 0 <= weight < 1:
        raise LabError(f"smoothing {weight}: choose a value in [0, 1) (0 draws the raw curve)")
    out, last, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)  # NaN/inf stay visible as gaps instead of poisoning the average
            continue
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n) if weight else v)
    return out


def tokens_per_step(run: Run) -> tuple[int, str]:
    """Tokens (language models) or samples (others) one optimizer step consumes, and the unit."""
    gb = (run.summary.get("global_batch") or {}).get("global")
    model = run.config.get("model") or {}
    if gb is None:
        data, trainer = run.config.get("data") or {}, run.config.get("trainer") or {}
        gb = int(data.get("batch_size") or 1) * int(trainer.get("accumulate_grad_batches") or 1)
    try:
        unit = family(model.get("name")).unit
    except LabError:  # a family this lab no longer knows: count samples
        unit = "samples"
    if unit == "tokens":
        return int(gb) * int(model.get("block_size") or 1), "tokens"
    return int(gb), "samples"


def scalars(run: Run) -> dict[str, list[tuple[int, float, float]]]:
    """A run's scalar curves (``lab.runs.scalars``: the one curve reader)."""
    return runs_mod.scalars(run)


def tag_order(tags: Iterable[str]) -> list[str]:
    """Tags sorted for pickers: losses first, then metrics, perf and learning rates; no hparams summaries."""
    def key(t: str) -> tuple[int, str]:
        rank = 0 if t.endswith("/loss") else 3 if t.startswith(("perf/", "lr-")) else 4 if t == "epoch" else 1
        return rank, t
    return sorted({t for t in tags if not t.startswith(("hp/", "_hparams_"))}, key=key)


def curves(runs: Sequence[Run], tags: Sequence[str], x: str = "step", smoothing: float = 0.0,
           data: dict[str, dict[str, list[tuple[int, float, float]]]] | None = None) -> pd.DataFrame:
    """Long-format curves: columns run, label, tag, step, x, value, smoothed, lone (for overlaid line charts).

    ``label`` tells the runs apart in a legend (``run_labels``). ``lone`` marks a curve with a
    single point (one validation so far, a test metric): a line through one point draws nothing,
    so the chart shows those as dots. Curves of fewer than ``MIN_SMOOTH_POINTS`` points are not
    smoothed (``smoothed`` is the raw value).

    ``x``: ``step``, ``tokens`` (step x tokens-or-samples per step) or ``wall time`` (seconds
    since the run's first logged point). ``data``: already-read scalars per run name (cache).
    """
    if x not in X_AXES:
        raise LabError(f"x axis {x!r}: choose one of {', '.join(X_AXES)}")
    frames = []
    labels = run_labels([r.name for r in runs])
    for run in runs:
        sc = data[run.name] if data is not None and run.name in data else scalars(run)
        per_step, _ = tokens_per_step(run)
        t0 = min((p[1] for pts in sc.values() for p in pts), default=0.0)
        for tag in tags:
            pts = sc.get(tag)
            if not pts:
                continue
            steps = [p[0] for p in pts]
            values = [p[2] for p in pts]
            xs = steps if x == "step" else [s * per_step for s in steps] if x == "tokens" else [p[1] - t0 for p in pts]
            smoothed = smooth(values, smoothing if len(pts) >= MIN_SMOOTH_POINTS else 0.0)
            frames.append(pd.DataFrame({"run": run.name, "label": labels[run.name], "tag": tag, "step": steps,
                                        "x": xs, "value": values, "smoothed": smoothed, "lone": len(pts) == 1}))
    if not frames:
        return pd.DataFrame(columns=["run", "label", "tag", "step", "x", "value", "smoothed", "lone"])
    return pd.concat(frames, ignore_index=True)


def run_labels(names: Sequence[str]) -> dict[str, str]:
    """Short legend labels that tell runs apart: ``<experiment> · <id suffix>``.

    Run names share long prefixes (``seed-mlp/20261128-1200...``) and a legend truncates the
    end of a label, so the run id's hex suffix goes in the part shown; when even those
    collide (or a folder was named by hand) the full name is the label.
    """
    short = {n: f"{n.split('/')[0]} · {n.rsplit('-', 1)[-1]}" if "/" in n else n for n in names}
    return short if len(set(short.values())) == len(set(names)) else {n: n for n in names}


def display_value(v: Any) -> str:
    """A config or metric value as text for a table: ``8`` stays ``8`` in a column beside ``0.05``
    (pandas would make both floats), floats keep 6 significant digits, missing ones are blank."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return v if isinstance(v, str) else json.dumps(v)


def display_frame(rows: Sequence[dict[str, Any]], index: str) -> pd.DataFrame:
    """``rows`` (config_table, final_metrics) as a table of text indexed by ``index``; other
    columns but ``differs`` hold ``display_value`` text."""
    df = pd.DataFrame([{k: (v if k in (index, "differs") else display_value(v)) for k, v in r.items()} for r in rows])
    return df.set_index(index) if not df.empty else df


# --------------------------------------------------------------------------- Compare page


def _cell(v: Any) -> Any:
    """Lists/dicts as compact text so a table column holds one type."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def config_table(runs: Sequence[Run], only_diff: bool = True) -> list[dict[str, Any]]:
    """One row per config field: ``{"field", "differs", <run name>: value, ...}`` (only differing ones by default)."""
    differ = config_changes([r.config for r in runs])
    shown = differ if only_diff else config_values([r.config for r in runs])
    return [{"field": k, "differs": k in differ, **{r.name: _cell(v) for r, v in zip(runs, vals)}}
            for k, vals in shown.items()]


def config_diff(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per config field whose value differs between the runs: ``{"field", <run name>: value, ...}``."""
    return [{k: v for k, v in row.items() if k != "differs"} for row in config_table(runs)]


def final_metrics(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Best/final/test metrics, params, wall time and throughput, one row per figure, one column per run."""
    per_run: list[dict[str, Any]] = []
    for r in runs:
        s = r.summary
        figs: dict[str, Any] = {f"best {k}": v for k, v in (s.get("best") or {}).items()}
        figs.update({k: v for k, v in (s.get("test") or {}).items()})
        figs.update({f"final {k}": v for k, v in (s.get("final") or {}).items()
                     if k.startswith(("train/", "val/"))})
        tput, unit = _throughput(s)
        figs.update({"params": (s.get("model") or {}).get("params"), "steps": s.get("step"),
                     "wall time (s)": s.get("wall_time_s"), f"throughput ({unit or '-'})": tput,
                     "mfu": (s.get("throughput") or {}).get("mfu")})
        figs["started from"] = runs_mod.lineage(r) or "random weights"
        per_run.append(figs)
    order: list[str] = []
    for figs in per_run:
        order += [k for k in figs if k not in order]
    return [{"metric": k, **{r.name: figs.get(k) for r, figs in zip(runs, per_run)}} for k in order]


def hparam_points(runs: Sequence[Run], metric: str) -> list[dict[str, Any]]:
    """For sweeps: each run's differing config fields and one metric (a summary figure, e.g. ``best val/loss``)."""
    diff = {k: vals for k, vals in config_changes([r.config for r in runs]).items() if k != "experiment"}
    metrics = {row["metric"]: row for row in final_metrics(runs)}
    return [{"run": r.name, **{f: _cell(vals[i]) for f, vals in diff.items()}, metric: metrics.get(metric, {}).get(r.name)}
            for i, r in enumerate(runs)]


# --------------------------------------------------------------------------- Run page


def artifacts(run: Run) -> list[dict[str, Any]]:
    """Every file in the run folder with its size (bytes), largest folders' files listed by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(run.path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue  # half-written temp files of atomic writes
            p = Path(dirpath, f)
            out.append({"file": str(p.relative_to(run.path)), "bytes": _stat(str(p))[1]})
    return out


def reproduce_command(run: Run) -> str:
    """The command that trains this run again (config.yaml is the fully resolved config, seed included)."""
    return f"lab fit --config {run.path / runs_mod.CONFIG}"


def samples(run: Run) -> list[dict[str, Any]]:
    """Generated text samples logged during training, newest first."""
    texts = read_events(run.path).texts
    rows = [{"tag": t, "step": s, "text": txt} for t, pts in texts.items() for s, _, txt in pts]
    return sorted(rows, key=lambda r: -r["step"])


def pictures(run: Run) -> list[dict[str, Any]]:
    """Pictures logged during training (TensorBoard images, e.g. a speech model's spectrograms): the newest
    of each tag, as ``{"tag", "step", "png"}`` (PNG bytes)."""
    images = read_events(run.path).images
    return [{"tag": tag, "step": pts[-1][0], "png": pts[-1][2]} for tag, pts in sorted(images.items()) if pts]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def eval_reports(run: Run) -> list[dict[str, Any]]:
    """``reports/eval-*.json`` of a run, each as ``{"label", "path", "report", "png"}``."""
    out = []
    for p in sorted(run.reports_dir.glob("eval-*.json")) if run.reports_dir.is_dir() else []:
        rep = _read_json(p)
        if rep is None:
            continue
        png = rep.get("confusion_png")
        out.append({"label": p.stem[len("eval-"):], "path": p, "report": rep,
                    "png": Path(png) if png and Path(png).is_file() else None})
    return out


def compression(run: Run) -> dict[str, Any]:
    """``compressed/``: the comparison rows (when ``--method all`` ran), pareto.png, per-method reports."""
    root = run.compressed_root
    if not root.is_dir():
        return {"comparison": None, "pareto_png": None, "methods": {}}
    methods = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rep = _read_json(d / "report.json")
        if rep is not None:
            methods[d.name] = rep
    png = root / "pareto.png"
    return {"comparison": _read_json(root / "comparison.json"), "pareto_png": png if png.is_file() else None,
            "methods": methods}


def method_rows(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A table of per-method compression reports (for runs compressed one method at a time)."""
    rows = []
    for name, rep in methods.items():
        d = rep.get("deltas") or {}
        rows.append({"method": name, "backend": rep.get("backend"), "size_bytes": rep.get("size_bytes"),
                     "size_ratio": d.get("size_ratio"), "quality_delta_rel": d.get("quality_delta_rel"),
                     **{k: v for k, v in d.items() if k.startswith("speedup")}})
    return rows
