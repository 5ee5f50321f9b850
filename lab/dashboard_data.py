"""What the dashboard shows, as plain data: every page is a thin view over these functions.

    from lab import dashboard_data as dd
    rows = dd.runs_table("runs")                          # one dict per run (Runs page)
    key = dd.runs_signature("runs")                       # changes when any summary/config changes
    run = dd.resolve("gpt-nano/20261128-120000-ab12", "runs")   # refuses names escaping the root
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
from typing import Any, Iterable, Sequence

import pandas as pd

from lab import runs as runs_mod
from lab.config import flatten
from lab.errors import LabError
from lab.runs import Run
from lab.tfevents import event_files, read_events

X_AXES = ("step", "tokens", "wall time")
STATUS_ORDER = ("running", "crashed", "failed", "interrupted", "completed", "unknown")


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
    """One row of the Runs table."""
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
        "started": s.get("started_at"), "error": s.get("error"),
    }


def runs_table(root: str | Path | None) -> list[dict[str, Any]]:
    """Every run under ``root``, newest first, as Runs-table rows."""
    return [run_row(r) for r in reversed(runs_mod.list_runs(root))]


def with_live_status(rows: list[dict[str, Any]], root: str | Path | None) -> list[dict[str, Any]]:
    """``rows`` with each ``running`` one re-read: its process may have died since they were cached.

    A killed run never writes summary.json again, so a table cached by file signatures would
    say ``running`` forever; this re-checks only those rows (``Run.status``, ``lab.procs``).
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
        out.append(r)
    return out


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
        raise LabError(f"smoothing must be in [0, 1), got {weight}")
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
    if model.get("name") == "gpt":
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
    """Long-format curves: columns run, tag, step, x, value, smoothed, lone (for overlaid line charts).

    ``lone`` marks a curve with a single point (one validation so far, a test metric): a line
    through one point draws nothing, so the chart shows those as dots.

    ``x``: ``step``, ``tokens`` (step x tokens-or-samples per step) or ``wall time`` (seconds
    since the run's first logged point). ``data``: already-read scalars per run name (cache).
    """
    if x not in X_AXES:
        raise LabError(f"x axis must be one of {X_AXES}, got {x!r}")
    frames = []
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
            frames.append(pd.DataFrame({"run": run.name, "tag": tag, "step": steps, "x": xs, "value": values,
                                        "smoothed": smooth(values, smoothing), "lone": len(pts) == 1}))
    if not frames:
        return pd.DataFrame(columns=["run", "tag", "step", "x", "value", "smoothed", "lone"])
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- Compare page


def _cell(v: Any) -> Any:
    """Lists/dicts as compact text so a table column holds one type."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def config_table(runs: Sequence[Run], only_diff: bool = True) -> list[dict[str, Any]]:
    """One row per config field: ``{"field", "differs", <run name>: value, ...}`` (only differing ones by default)."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = []
    for k in keys:
        vals = [f.get(k) for f in flat]
        differs = any(v != vals[0] for v in vals[1:])
        if differs or not only_diff:
            rows.append({"field": k, "differs": differs, **{r.name: _cell(v) for r, v in zip(runs, vals)}})
    return rows


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
        per_run.append(figs)
    order: list[str] = []
    for figs in per_run:
        order += [k for k in figs if k not in order]
    return [{"metric": k, **{r.name: figs.get(k) for r, figs in zip(runs, per_run)}} for k in order]


def hparam_points(runs: Sequence[Run], metric: str) -> list[dict[str, Any]]:
    """For sweeps: each run's differing config fields and one metric (a summary figure, e.g. ``best val/loss``)."""
    fields = [row["field"] for row in config_diff(runs) if row["field"] not in ("experiment",)]
    metrics = {row["metric"]: row for row in final_metrics(runs)}
    out = []
    for r in runs:
        flat = flatten(r.config)
        value = metrics.get(metric, {}).get(r.name)
        out.append({"run": r.name, **{f: _cell(flat.get(f)) for f in fields}, metric: value})
    return out


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
