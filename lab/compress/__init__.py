"""Compression framework: every method makes a measured artifact under compressed/<method>/.

CONTRACT for a compression method (prune/distill implement it too)
------------------------------------------------------------------
A method is a plain function::

    def method(module: LabModule, dm: LightningDataModule, cfg: Config, out_dir: Path,
               **options) -> Artifact

- ``module``: the original run's LightningModule, loaded with ``lab.checkpoints.load_module``
  (eval mode, CPU). ``module.model`` is the pure nn.Module. A method must NOT modify it in
  place: ``copy.deepcopy(module)`` first (the framework evaluates the original from it).
- ``dm``: the run's DataModule, already ``prepare_data()`` + ``setup("fit")`` + set up for
  the evaluation split (``test``, or ``validate`` with ``--split val``).
  ``dm.train_dataloader()`` for fine-tunes (``lab.train.train_module``),
  ``dm.val_dataloader()`` for calibration / parity inputs. Do not evaluate on the test split:
  the framework does that.
- ``cfg``: the run's ``lab.config.Config`` (``from_dict(run.config)``); read-only.
- ``out_dir``: an existing, empty temp folder (``compressed/.<method>.tmp-xxxx``). Write every
  file of the artifact inside it. The framework renames it to ``compressed/<method>/`` after
  evaluation succeeds, and deletes it if the method raises. Don't write anywhere else.
- ``options``: method options from the CLI / caller, e.g. ``sparsity=0.5``, ``steps=100``,
  ``seed=...``. Every option must have a default; ignore unknown ones via ``**_``.
- Raise ``lab.errors.LabError`` for user-facing problems (bad option values).

It returns an ``Artifact`` (dataclass below):

- ``predict: Callable[[torch.Tensor], torch.Tensor]``: one input batch (as the DataModule
  yields ``x``: token ids [B, T] long, images [B, C, H, W], features [B, F]) -> model outputs
  (logits [B, T, V] / [B, num_classes], or regression outputs), as a torch tensor on CPU.
  Called under ``torch.inference_mode()`` by the framework's ``quality`` and ``cost``.
- ``files: list[Path]``: the files that count for size on disk (inside ``out_dir``).
- ``params: int | None``: parameter count of the artifact (None if not meaningful).
- ``backend: str``: what runs it, e.g. ``"torch.ao.quantization.quantize_dynamic"``,
  ``"onnxruntime 1.x CPUExecutionProvider"``, ``"torch eager fp32"``.
- ``notes: dict[str, Any]``: method-specific JSON-serialisable figures, copied into the report
  under ``"notes"`` (e.g. ``sparsity``, ``student_config``, ``baseline_student`` quality dict,
  ``"note": "unstructured sparsity gives no speed-up"``).
- ``example_module: nn.Module | None``: when predict is a module's forward, the module itself
  (informational; the framework always times through ``predict``).

The framework (``compress``) then evaluates the artifact with ``lab.evaluate.quality`` and
``lab.cost.cost`` exactly like the original, and writes ``report.json`` with
``quality``, ``cost``, ``size_bytes``, ``params``, ``backend``, ``notes`` and ``deltas``
(``size_ratio``, ``latency_ratio_b<N>`` and ``speedup_b<N>`` per timed batch size, by default
1 and 32, from timing the original and the artifact alternately in the same window so that a
busy machine slows both alike, ``quality_delta`` and ``quality_delta_rel`` on the primary figure: loss for
language models, accuracy for classifiers, MSE for regressors) against the original's
evaluation. The framework fixes ``torch.set_num_threads`` for the whole call (method
included), so an ONNX Runtime session a method builds can take ``torch.get_num_threads()``.

Usage::

    from lab.compress import compress
    report = compress(run, "int8-dynamic")
    report["deltas"]["size_ratio"], report["backend"]
    comparison = compress(run, "all")   # every method + compressed/comparison.json, pareto.png
    print(comparison_text(comparison))  # size (MiB), latency, speed-up and quality per artifact

Methods are looked up in the fixed ``METHODS`` table (``"module:function"`` strings are
resolved with importlib from this table only, never from user input).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lab import runs
from lab.errors import LabError, StorageError
from lab.fileio import atomic_write, check_writable, read_only_run_advice, storage_errors, write_json


@dataclass
class Artifact:
    """What a compression method hands back to the framework (see the module docstring)."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    files: list[Path]
    params: int | None = None
    backend: str = "torch eager fp32"
    notes: dict[str, Any] = field(default_factory=dict)
    example_module: nn.Module | None = None


METHODS: dict[str, str] = {
    "int8-dynamic": "lab.compress.quantize:int8_dynamic",
    "int8-static": "lab.compress.int8_static:int8_static",
    "onnx": "lab.compress.onnx:onnx_fp32",
    "onnx-int8": "lab.compress.onnx:onnx_int8",
    "prune": "lab.compress.prune:unstructured",
    "prune-structured": "lab.compress.prune:structured",
    "distill": "lab.compress.distill:distill",
}
"""Method name -> ``"module:function"``: the only table methods are resolved from."""


def resolve_method(name: str) -> Callable[..., Artifact]:
    """The function behind ``name`` (imported lazily, from ``METHODS`` only)."""
    if name not in METHODS:
        raise LabError(f"unknown compression method {name!r}: choose one of {', '.join(METHODS)} or all")
    module_name, _, attr = METHODS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise LabError(f"method {name} is not available in this installation ({module_name} is missing)") from None
        raise
    fn = getattr(module, attr, None)
    if fn is None:
        raise LabError(f"method {name} is not available in this installation ({module_name} has no {attr})")
    return fn


def _fraction(name: str, v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


def _whole_number(minimum: int) -> Callable[[str, Any], bool]:
    return lambda n, v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


_OPTION_CHECKS: dict[str, tuple[Callable[[str, Any], bool], str]] = {
    "sparsity": (_fraction, "a fraction in [0, 1)"),
    "alpha": (lambda n, v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1, "a number in [0, 1]"),
    "steps": (_whole_number(0), "a whole number >= 0"),
    "temperature": (lambda n, v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
    "calibration_batches": (_whole_number(1), "a whole number >= 1"),
    "lr_scale": (lambda n, v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
}
"""Option name -> (check, what is allowed): checked before any work starts."""


def check_options(method: str, options: dict[str, Any]) -> None:
    """Refuse unknown options and out-of-range values before anything is loaded or written.

    A single method takes only its own options; ``all`` takes any option some method takes
    (each method ignores the others').
    """
    names = list(METHODS) if method == "all" else [method]
    accepted: set[str] = set()
    for name in names:
        try:
            fn = resolve_method(name)
        except LabError:
            if method != "all":
                raise
            continue  # `all` reports an unavailable method in its table instead
        params = list(inspect.signature(fn).parameters.values())[4:]
        accepted |= {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise LabError(f"{method} does not take option(s) {', '.join(unknown)}: drop them; it takes "
                       f"{', '.join(sorted(accepted)) or 'none'}")
    for key, value in options.items():
        check, allowed = _OPTION_CHECKS.get(key, (None, ""))
        if check is not None and not check(key, value):
            raise LabError(f"option {key}={value!r} is invalid: expected {allowed}")


def _size(files: list[Path], out_dir: Path) -> int:
    total = 0
    for f in files:
        f = Path(f)
        f = f if f.is_absolute() else out_dir / f
        if not f.is_file():
            raise RuntimeError(f"the method listed {f} as part of its artifact but did not write it")
        total += f.stat().st_size
    return total


def deltas(original: dict[str, Any], quality: dict[str, Any], cost: dict[str, Any], size_bytes: int,
           paired: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ratios against the original: size, latency per batch size, and the primary quality figure.

    Latency ratios come from ``paired`` (``lab.cost.compare_latency``: the original and the
    artifact timed alternately) when given, else from the two separate cost measurements.
    """
    out: dict[str, Any] = {"size_ratio": size_bytes / original["size_bytes"]}
    if paired:
        for name, entry in paired.items():
            out[f"latency_ratio_{name}"] = entry["ratio"]
            out[f"speedup_{name}"] = entry["speedup"]
        out["latency_ratios_from"] = "interleaved timing of original and artifact (lab.cost.compare_latency)"
    else:
        for name, entry in cost["latency"].items():
            base = original["cost"]["latency"].get(name)
            if base:
                out[f"latency_ratio_{name}"] = entry["p50_ms"] / base["p50_ms"]
                out[f"speedup_{name}"] = base["p50_ms"] / entry["p50_ms"]
        out["latency_ratios_from"] = "separate cost measurements"
    p0, p1 = original["quality"]["primary"], quality["primary"]
    delta = p1["value"] - p0["value"]
    out.update(quality_metric=p0["name"], higher_is_better=p0["higher_is_better"], quality_original=p0["value"],
               quality=p1["value"], quality_delta=delta,
               quality_delta_rel=delta / abs(p0["value"]) if p0["value"] else math.nan)
    return out


def compress(run: runs.Run | str | Path, method: str, *, ckpt: str = "best", split: str = "test",
             max_batches: int | None = None, threads: int | None = None, repeats: int = 20, warmup: int = 3,
             batch_sizes: Any = (1, 32), runs_root: Any = None, **options: Any) -> dict[str, Any]:
    """Compress a run with ``method`` (or ``all``) into ``compressed/<method>/`` and return its report.

    The original is evaluated once (the cached ``reports/eval-<ckpt>.json`` is reused when it
    measured the same checkpoint with the same settings); the method works in a temp folder
    beside the target, which is renamed into place only after the artifact has been
    evaluated, so a failure leaves the previous artifact (if any) untouched and no
    half-written folder.
    """
    from lab import evaluate as ev

    run = run if isinstance(run, runs.Run) else runs.resolve_run(run, runs_root)
    if method != "all" and method not in METHODS:
        raise LabError(f"unknown compression method {method!r}: choose one of {', '.join(METHODS)} or all")
    check_options(method, options)
    settings = ev.default_settings(max_batches, threads, repeats, warmup, batch_sizes)
    read_only = read_only_run_advice(run.name)
    check_writable(run.path, if_read_only=read_only)  # before any loading or measuring
    with storage_errors(run.compressed_root, if_read_only=read_only):  # a full disk mid-way: one line too
        return _compress(run, method, ckpt, split, settings, options)


def _compress(run: runs.Run, method: str, ckpt: str, split: str, settings: dict[str, Any],
              options: dict[str, Any]) -> dict[str, Any]:
    from lab import evaluate as ev

    cfg = ev.run_config(run)
    module = ev.load_checked(run, ckpt)
    dm = ev.load_data(cfg, split, module)
    original = ev.cached_report(run, ckpt, split, settings)
    if original is None:
        original = ev.measure(run, module, dm, cfg, ckpt, split, settings)
        ev.write_report(run, original)
    if method != "all":
        return _one(run, method, module, dm, cfg, original, split, settings, options)
    reports: dict[str, Any] = {}
    for name in METHODS:
        try:
            reports[name] = _one(run, name, module, dm, cfg, original, split, settings, options)
        except StorageError:
            raise  # the next method would hit the same full disk or read-only folder
        except LabError as e:
            reports[name] = {"method": name, "error": str(e)}
    comparison = comparison_table(original, reports)
    write_json(run.compressed_root / "comparison.json", comparison)
    pareto_png(comparison, run.compressed_root / "pareto.png", title=run.name)
    return comparison


def _one(run: runs.Run, method: str, module: Any, dm: Any, cfg: Any, original: dict[str, Any], split: str,
         settings: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    from lab import cost as lab_cost
    from lab import evaluate as ev

    fn = resolve_method(method)
    root = run.compressed_root
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{method}.tmp-", dir=root))
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(settings["threads"])
        artifact = fn(copy.deepcopy(module), dm, cfg, tmp, **options)
        if not isinstance(artifact, Artifact):
            raise TypeError(f"method {method} returned {type(artifact).__name__}, not an Artifact")
        q = ev.quality(artifact.predict, dm, split, ev.kind_of(cfg), max_batches=settings["max_batches"],
                       threads=settings["threads"])
        c = lab_cost.cost(artifact.predict, ev.example_batch(dm, split), batch_sizes=settings["batch_sizes"],
                          warmup=settings["warmup"], repeats=settings["repeats"], threads=settings["threads"])
        paired = lab_cost.compare_latency(module.model, artifact.predict, ev.example_batch(dm, split),
                                          batch_sizes=settings["batch_sizes"], warmup=settings["warmup"],
                                          repeats=settings["repeats"], threads=settings["threads"])
        size = _size(artifact.files, tmp)
        report = {
            "version": ev.REPORT_VERSION, "run": run.name, "method": method, "ckpt": original["ckpt"], "split": split,
            "kind": original["kind"], "created_at": runs.now_iso(), "torch": torch.__version__,
            "backend": artifact.backend, "settings": settings,
            "options": {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool)) or v is None},
            "files": sorted(str(Path(f).relative_to(tmp) if Path(f).is_absolute() else f) for f in artifact.files),
            "size_bytes": size, "params": artifact.params, "quality": q, "cost": c,
            "original": {k: original[k] for k in ("size_bytes", "params", "backend")} | {
                "quality": original["quality"]["primary"], "latency": original["cost"]["latency"]},
            "paired_latency": paired, "deltas": deltas(original, q, c, size, paired), "notes": artifact.notes,
        }
        write_json(tmp / "report.json", report)
        _replace_dir(tmp, run.compressed_dir(method))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads_before)
    return report


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``; an older ``dst`` is removed only after the swap."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old / dst.name, dst)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def load_report(run: runs.Run, method: str) -> dict[str, Any]:
    """``compressed/<method>/report.json`` of a run."""
    from lab.compress.artifacts import artifact_file

    return json.loads(artifact_file(run, method).read_text(encoding="utf-8"))


LATENCY_FROM = ("p50 latency of the original (its own measurement) times each artifact's latency ratio from the "
                "interleaved timing of the two (deltas.latency_ratio_b<N>), so every row agrees with its speedup")


def comparison_table(original: dict[str, Any], reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per artifact (the original first): size (MiB), latency, quality and their ratios.

    Latency: each artifact's own ``cost`` measurement runs minutes after the original's (whose
    figure may come from a cached evaluation), so on a shared machine the two can differ by
    2x in either direction; only the interleaved timing (``lab.cost.compare_latency``) is a
    like-for-like comparison. ``latency_b<N>_ms`` is therefore the original's p50 times the
    interleaved ratio: the table, the plot and ``speedup_b<N>`` tell the same story.
    """
    base = {b: e["p50_ms"] for b, e in original["cost"]["latency"].items()}

    def row(name: str, r: dict[str, Any], d: dict[str, Any] | None) -> dict[str, Any]:
        own = {b: e["p50_ms"] for b, e in r["cost"]["latency"].items()}
        latency = {b: (base[b] * d[f"latency_ratio_{b}"] if d and f"latency_ratio_{b}" in d and b in base else own[b])
                   for b in own}
        return {"method": name, "backend": r.get("backend"), "params": r.get("params"), "size_bytes": r["size_bytes"],
                "size_mib": r["size_bytes"] / 2**20,
                **{f"latency_{b}_ms": v for b, v in latency.items()},
                "quality_metric": r["quality"]["primary"]["name"], "quality": r["quality"]["primary"]["value"],
                "size_ratio": d["size_ratio"] if d else 1.0,
                **{k: v for k, v in (d or {}).items() if k.startswith(("latency_ratio", "speedup"))},
                "quality_delta_rel": d["quality_delta_rel"] if d else 0.0}

    rows = [row("original", original, None)]
    errors = {}
    for name, r in reports.items():
        if "error" in r:
            errors[name] = r["error"]
        else:
            rows.append(row(name, r, r["deltas"]))
    batch = max(base, key=lambda b: int(b[1:]))
    return {"run": original["run"], "ckpt": original["ckpt"], "split": original["split"],
            "higher_is_better": original["quality"]["primary"]["higher_is_better"], "latency_batch": batch,
            "latency_from": LATENCY_FROM, "rows": rows, "errors": errors}


def comparison_text(comparison: dict[str, Any]) -> str:
    """The comparison as a plain-text table: size (MiB), latency at the plotted batch size, quality."""
    b = comparison["latency_batch"]
    metric = comparison["rows"][0]["quality_metric"]
    lines = [f"{'method':18} {'size MiB':>9} {'size':>7} {f'latency {b} ms':>15} {'speed-up':>8} {metric:>9} {'change':>7}"]
    for r in comparison["rows"]:
        lines.append(f"{r['method']:18} {r['size_mib']:9.3f} {'x' + format(r['size_ratio'], '.2f'):>7} "
                     f"{r[f'latency_{b}_ms']:15.2f} {'x' + format(r.get(f'speedup_{b}', 1.0), '.2f'):>8} "
                     f"{r['quality']:9.4f} {r['quality_delta_rel']:+7.1%}")
    return "\n".join(lines)


def pareto_axes(comparison: dict[str, Any]) -> list[tuple[str, str]]:
    """(row key, axis label) of the plot's two panels: size, and latency at the comparison's batch size."""
    b = comparison["latency_batch"]
    return [("size_mib", "size on disk (MiB)"), (f"latency_{b}_ms", f"latency at batch {b[1:]}, p50 (ms)")]


def pareto_figure(comparison: dict[str, Any], title: str = "") -> Any:
    """Size vs quality and latency vs quality, one point per row of ``comparison``, Pareto front in red.

    The points are the comparison's own numbers (``pareto_axes``): what the plot shows is what
    the table says. Labels that would overprint each other are moved apart, with a leader line.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = comparison["rows"]
    higher = comparison["higher_is_better"]
    fig = Figure(figsize=(10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = []
    for i, (xkey, xlabel) in enumerate(pareto_axes(comparison)):
        ax = fig.add_subplot(1, 2, i + 1)
        pts = [(r[xkey], r["quality"], r["method"]) for r in rows]
        front = _pareto(pts, higher)
        ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], zorder=3,
                   color=["tab:red" if name in front else "tab:blue" for _, _, name in pts])
        fx = sorted((x, y) for x, y, name in pts if name in front)
        if len(fx) > 1:
            ax.plot(*zip(*fx), color="tab:red", alpha=0.4, drawstyle="steps-post" if higher else "default")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{rows[0]['quality_metric']} ({'higher' if higher else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.1)  # room for the labels of the outermost points
        axes.append((ax, pts))
    fig.suptitle(f"{title}: red = Pareto front" if title else "red = Pareto front", fontsize=9)
    fig.tight_layout()
    for ax, pts in axes:
        _label(fig, ax, pts)
    return fig


def _label(fig: Any, ax: Any, pts: list[tuple[float, float, str]]) -> None:
    """Name each point; a label that would overlap one already placed moves down a line at a time
    (and gets a leader line back to its point)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()

    def words(text: Any) -> Any:  # the label's own box, without its leader line
        text.update_positions(renderer)
        return Text.get_window_extent(text, renderer)

    placed: list[Any] = []
    for x, y, name in sorted(pts, key=lambda p: (-p[1], p[0])):
        dy = 3.0
        text = ax.annotate(name, (x, y), fontsize=7, xytext=(5, dy), textcoords="offset points")
        box = words(text)
        step = box.height * 72 / fig.dpi + 1
        while any(box.overlaps(b) for b in placed) and dy > -40 * step:
            dy -= step
            text.xyann = (5, dy)
            box = words(text)
        if dy != 3.0:
            text.remove()
            ax.annotate(name, (x, y), fontsize=7, xytext=(5, dy), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5, "shrinkA": 0, "shrinkB": 3})
        placed.append(box)


def pareto_png(comparison: dict[str, Any], path: Path, title: str = "") -> Path:
    """``pareto_figure`` written to ``path`` as PNG (atomically)."""
    import io

    buf = io.BytesIO()
    pareto_figure(comparison, title).savefig(buf, format="png")
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def _pareto(points: list[tuple[float, float, str]], higher: bool) -> set[str]:
    """Names of points no other point beats on both cost (lower) and quality."""
    def better(a: float, b: float) -> bool:
        return a >= b if higher else a <= b

    front = set()
    for x, y, name in points:
        dominated = any(x2 <= x and better(y2, y) and (x2 < x or y2 != y) for x2, y2, n2 in points if n2 != name)
        if not dominated:
            front.add(name)
    return front
