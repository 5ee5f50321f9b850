"""Measured reports for a run: quality on a held-out split and the cost of running the model.

    from lab.evaluate import evaluate
    report = evaluate("gpt-nano/20261128-120000-ab12")          # best checkpoint, test split
    report["quality"]["perplexity"], report["cost"]["latency"]["b32"]["p50_ms"]
    # also written to runs/<exp>/<run>/reports/eval-best.json and logged to TensorBoard (eval/best/...)

The pieces are reusable, so a quantized module, an ONNX Runtime session and the original
model are all measured by the same code (``lab.compress`` does exactly that)::

    q = quality(predict, dm, "test", "lm")          # predict: input batch -> outputs
    c = lab.cost.cost(predict, example_batch)       # latency p50/p95 at batch 1 and 32, memory

Quality is deterministic: the val/test loaders are sequential, losses are summed in float64
and the thread count is fixed, so evaluating twice gives identical figures. How latency and
memory are measured: ``lab.cost``.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from lab import ranking, runs
from lab.config import Config, from_dict
from lab.cost import Predict, cost, fixed_threads, num_params, state_bytes
from lab.families import build_datamodule, family_of
from lab.errors import LabError
from lab.fileio import (atomic_write, check_writable, quiet_tensorboard_writer_errors, read_only_run_advice,
                        storage_errors, write_json)

KINDS = ("lm", "classifier", "regressor", "ranking")
PRIMARY = {"lm": ("loss", False), "classifier": ("accuracy", True), "regressor": ("mse", False),
           "ranking": ranking.PRIMARY}
"""Kind -> (the quality figure compression deltas are taken on, higher is better?)."""
SPLITS = ("test", "val")
REPORT_VERSION = 1


def kind_of(cfg: Config) -> str:
    """The task kind the model's family declares: ``lm``, ``classifier`` or ``regressor``."""
    return family_of(cfg).task


# --------------------------------------------------------------------------- loading


def run_config(run: runs.Run) -> Config:
    """The run's Config, refusing folders that have no config.yaml."""
    if not run.config:
        raise LabError(f"{run.path} has no config.yaml: it is not a complete run (`lab runs` lists the runs)")
    return from_dict(run.config)


def checkpoint_path(run: runs.Run, ckpt: str) -> Path:
    return run.checkpoint(ckpt) if ckpt in ("best", "last") else Path(ckpt)


def existing_checkpoint(run: runs.Run, ckpt: str) -> Path:
    """``checkpoint_path``, refusing one that is not there in one line that lists the run's checkpoints."""
    path = checkpoint_path(run, ckpt)
    if not path.is_file():
        have = sorted(p.name for p in run.checkpoints_dir.glob("*.ckpt")) if run.checkpoints_dir.is_dir() else []
        raise LabError(f"no checkpoint {path}: the run has {have or 'no checkpoints'}; use one of them "
                       "(--ckpt best, last or a path)")
    return path


def checkpoint_label(ckpt: str) -> str:
    """``best``/``last``, or a checkpoint path's stem made safe for a file name."""
    if ckpt in ("best", "last"):
        return ckpt
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(ckpt).stem).strip("._") or "ckpt"


def load_checked(run: runs.Run, ckpt: str = "best") -> Any:
    """``lab.checkpoints.load_module`` with every failure turned into a one-line ``LabError``.

    Missing, truncated or pickled-object checkpoints are refused by ``load_module``
    (``weights_only=True``); a state_dict whose shapes or keys do not match the run's
    config is refused here.
    """
    from lab.checkpoints import load_module

    run_config(run)
    path = existing_checkpoint(run, ckpt)
    try:
        return load_module(run, ckpt)
    except LabError:
        raise
    except FileNotFoundError as e:
        raise LabError(f"{run.name}: {e.filename or e} is missing; the run folder is incomplete: restore it "
                       "or train again") from None
    except RuntimeError as e:
        first = (str(e).splitlines() or [""])[0][:200]
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:3])[:300]
        # A text run's vocabulary comes from tokenizer.json: a replaced tokenizer changes the embedding's shape.
        files = "config.yaml and tokenizer.json" if run.tokenizer_path.exists() else "config.yaml"
        raise LabError(f"checkpoint {path} does not match the run's {files} ({first} {detail}): the run folder "
                       "changed since training; restore its files or train again") from None


def load_data(cfg: Config, split: str, module: Any = None) -> Any:
    """The run's DataModule, prepared and set up for fitting and for ``split``."""
    if split not in SPLITS:
        raise LabError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "test" and cfg.data.test_fraction <= 0:
        raise LabError("this run has no test split (data.test_fraction = 0): use --split val")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test" if split == "test" else "validate")
    vocab = getattr(getattr(module, "model", None), "config", None)
    vocab = getattr(vocab, "vocab_size", None)
    if vocab is not None and getattr(dm, "vocab_size", None) and dm.vocab_size > vocab:
        raise LabError(f"the data now has {dm.vocab_size} tokens but the checkpoint's model has {vocab}: "
                       "the corpus changed since training")
    return dm


def loader(dm: Any, split: str) -> Iterable[Any]:
    return dm.test_dataloader() if split == "test" else dm.val_dataloader()


def example_batch(dm: Any, split: str = "val") -> torch.Tensor:
    """The first input batch of ``split`` (real data, for latency, parity and export)."""
    return next(iter(loader(dm, split)))[0]


# --------------------------------------------------------------------------- quality


def quality(predict: Predict, dm: Any, split: str, kind: str, max_batches: int | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Quality of ``predict`` on ``split`` (sequential batches, so always the same figures).

    - ``lm``: loss (nats/token), perplexity = exp(loss), bits per token and per character
    - ``classifier``: loss, accuracy, macro-F1, per-class precision/recall, confusion matrix
      (rows: true class, columns: predicted) and the class names in that order
    - ``regressor``: MSE, MAE, R²

    ``primary`` names the figure compression deltas use, and whether higher is better.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "ranking":  # recommenders: recall/NDCG@10 and coverage beside popularity and random baselines
        return ranking.quality(predict, dm, split, max_batches=max_batches, threads=threads)
    tokenizer = getattr(dm, "tokenizer", None)
    count_chars = kind == "lm" and tokenizer is not None and type(tokenizer).__name__ != "CharTokenizer"
    nll = 0.0
    n = 0
    chars = 0
    preds: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    sq = ab = 0.0
    with fixed_threads(threads), torch.inference_mode():
        for i, (x, y) in enumerate(loader(dm, split)):
            if max_batches is not None and i >= max_batches:
                break
            out = torch.as_tensor(predict(x)).float()
            if kind == "lm":
                nll += float(F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum").double())
                n += y.numel()
                if count_chars:
                    chars += sum(len(tokenizer.decode(row.tolist())) for row in y)
            elif kind == "classifier":
                nll += float(F.cross_entropy(out, y, reduction="sum").double())
                n += len(y)
                preds.append(out.argmax(-1))
                targets.append(y)
            else:
                d = out.reshape(y.shape).double() - y.double()
                sq += float((d * d).sum())
                ab += float(d.abs().sum())
                n += y.numel()
                targets.append(y.double().flatten())
    if n == 0:
        raise LabError(f"the {split} split is empty: nothing to evaluate")
    name, higher = PRIMARY[kind]
    if kind == "lm":
        loss = nll / n
        chars = chars if count_chars else n
        bpt = loss / math.log(2)
        q: dict[str, Any] = {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": bpt,
                             "bits_per_character": bpt * n / chars if count_chars else bpt,
                             "tokens": n, "characters": chars}
    elif kind == "classifier":
        q = _classification(torch.cat(preds), torch.cat(targets), _num_classes(dm, targets))
        q["loss"] = nll / n
        q["class_names"] = class_names(dm, len(q["confusion_matrix"]))
    else:
        t = torch.cat(targets)
        ss_tot = float(((t - t.mean()) ** 2).sum())
        mse = sq / n
        q = {"mse": mse, "mae": ab / n, "r2": 1.0 - sq / ss_tot if ss_tot > 0 else float("nan"),
             "rmse": math.sqrt(mse), "samples": n}
    q["primary"] = {"name": name, "value": q[name], "higher_is_better": higher}
    q["split"] = split
    return q


def _num_classes(dm: Any, targets: list[torch.Tensor]) -> int:
    n = getattr(dm, "num_classes", None) or getattr(getattr(dm, "config", None), "num_classes", None)
    return int(n) if n else int(max(int(t.max()) for t in targets)) + 1


def class_names(dm: Any, k: int) -> list[str]:
    """The DataModule's names for the ``k`` classes (``dm.class_names``), else ``"0"`` .. ``"k-1"``."""
    names = [str(c) for c in getattr(dm, "class_names", None) or []]
    return names if len(names) == k else [str(i) for i in range(k)]


def _classification(pred: torch.Tensor, true: torch.Tensor, k: int) -> dict[str, Any]:
    k = max(k, int(pred.max()) + 1, int(true.max()) + 1)
    cm = torch.bincount(true * k + pred, minlength=k * k).reshape(k, k).double()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return {"accuracy": float(tp.sum() / cm.sum()), "macro_f1": float(f1.mean()),
            "precision": [float(v) for v in precision], "recall": [float(v) for v in recall],
            "support": [int(v) for v in support], "confusion_matrix": cm.long().tolist(), "samples": int(cm.sum())}


# --------------------------------------------------------------------------- the report


def measure(run: runs.Run, module: Any, dm: Any, cfg: Config, ckpt: str, split: str,
            settings: dict[str, Any]) -> dict[str, Any]:
    """Quality and cost of an already loaded module: the body of ``evaluate``."""
    model = module.model.eval()
    kind = kind_of(cfg)
    path = checkpoint_path(run, ckpt)
    q = quality(model, dm, split, kind, max_batches=settings["max_batches"], threads=settings["threads"])
    c = cost(model, example_batch(dm, split), batch_sizes=settings["batch_sizes"], warmup=settings["warmup"],
             repeats=settings["repeats"], threads=settings["threads"])
    stat = path.stat()
    return {
        "version": REPORT_VERSION, "run": run.name, "ckpt": ckpt, "label": checkpoint_label(ckpt), "split": split,
        "kind": kind, "model": cfg.model.name, "created_at": runs.now_iso(), "torch": torch.__version__,
        "backend": "torch eager fp32", "settings": settings,
        "checkpoint": {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "params": num_params(model), "size_bytes": state_bytes(model),
        "size_note": "size_bytes: the fp32 weights (state_dict) alone; checkpoint.bytes also holds optimizer state",
        "quality": q, "cost": c,
    }


def default_settings(max_batches: int | None = None, threads: int | None = None, repeats: int = 20,
                     warmup: int = 3, batch_sizes: Iterable[int] = (1, 32)) -> dict[str, Any]:
    # Checked before any loading: torch.set_num_threads(-1) fails deep inside the measurement.
    if max_batches is not None and max_batches < 1:
        raise LabError(f"max_batches = {max_batches}: give a whole number >= 1, or leave it out to use every batch")
    if threads is not None and threads < 1:
        raise LabError(f"threads = {threads}: give a whole number >= 1, or leave it out to use torch's default")
    if repeats < 1 or warmup < 0:
        raise LabError(f"repeats = {repeats}, warmup = {warmup}: give repeats >= 1 and warmup >= 0 (timed and "
                       "untimed runs per batch size)")
    batch_sizes = list(batch_sizes)
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise LabError(f"batch_sizes = {batch_sizes}: give one or more whole numbers >= 1")
    return {"max_batches": max_batches, "threads": int(threads or torch.get_num_threads()), "repeats": int(repeats),
            "warmup": int(warmup), "batch_sizes": sorted({int(b) for b in batch_sizes})}


def evaluate(run: runs.Run | str | Path, ckpt: str = "best", split: str = "test", *, max_batches: int | None = None,
             threads: int | None = None, repeats: int = 20, warmup: int = 3,
             batch_sizes: Iterable[int] = (1, 32), log: bool = True, runs_root: Any = None) -> dict[str, Any]:
    """Evaluate a run's checkpoint; write ``reports/eval-<ckpt>.json`` and log to TensorBoard.

    Raises ``LabError`` for a missing run, a missing/truncated/unsafe checkpoint, or a
    checkpoint that does not match the run's config; nothing is written then.
    """
    run = run if isinstance(run, runs.Run) else runs.resolve_run(run, runs_root)
    settings = default_settings(max_batches, threads, repeats, warmup, batch_sizes)
    check_writable(run.path, if_read_only=read_only_run_advice(run.name))  # before minutes of measuring
    cfg = run_config(run)
    module = load_checked(run, ckpt)
    dm = load_data(cfg, split, module)
    report = measure(run, module, dm, cfg, ckpt, split, settings)
    write_report(run, report, log=log)
    return report


def write_report(run: runs.Run, report: dict[str, Any], log: bool = True) -> Path:
    """Write the eval report (and confusion matrix PNG) atomically; log figures to TensorBoard.

    A full disk or read-only run folder raises one ``StorageError`` line (TensorBoard's writer included).
    """
    label = report["label"]
    png = None
    with storage_errors(run.reports_dir, if_read_only=read_only_run_advice(run.name)):
        if report["kind"] == "classifier":
            png = run.reports_dir / f"confusion-{label}.png"
            image = save_confusion_png(report["quality"]["confusion_matrix"], png,
                                       title=f"{run.name} {label} ({report['split']})",
                                       labels=report["quality"].get("class_names"))
            report["confusion_png"] = str(png)
        path = write_json(run.eval_report(label), report)
        if log:
            log_report(run, report, image if png else None)
    return path


def scalar_figures(report: dict[str, Any]) -> dict[str, float]:
    """The report's headline numbers, flat: what TensorBoard and tables show."""
    q, c = report["quality"], report["cost"]
    keys = {"lm": ("loss", "perplexity", "bits_per_token", "bits_per_character"),
            "classifier": ("loss", "accuracy", "macro_f1"), "regressor": ("mse", "mae", "r2"),
            "ranking": ranking.SCALARS}[report["kind"]]
    out = {f"{report['split']}/{k}": float(q[k]) for k in keys}
    for name, entry in c["latency"].items():
        out[f"cost/latency_{name}_p50_ms"] = entry["p50_ms"]
        out[f"cost/latency_{name}_p95_ms"] = entry["p95_ms"]
        out[f"cost/throughput_{name}_samples_per_s"] = entry["samples_per_s"]
    out["cost/peak_memory_increase_mb"] = c["peak_memory"]["increase_mb"]
    out["cost/params"] = float(report["params"])
    out["cost/size_mb"] = report["size_bytes"] / 2**20
    return out


def log_report(run: runs.Run, report: dict[str, Any], confusion: np.ndarray | None = None) -> None:
    """Scalars under ``eval/<ckpt>/...`` in the run's own TensorBoard folder."""
    from torch.utils.tensorboard import SummaryWriter

    quiet_tensorboard_writer_errors()  # a full disk: one line from write_report, not the writer thread's traceback
    step = int(run.summary.get("step") or 0)
    writer = SummaryWriter(log_dir=str(run.path), filename_suffix=".eval")
    try:
        for tag, value in scalar_figures(report).items():
            writer.add_scalar(f"eval/{report['label']}/{tag}", value, step)
        if confusion is not None:
            writer.add_image(f"eval/{report['label']}/confusion_matrix", confusion, step, dataformats="HWC")
    finally:
        writer.close()


def save_confusion_png(matrix: list[list[int]], path: Path, title: str = "",
                       labels: list[str] | None = None) -> np.ndarray:
    """Draw the confusion matrix with matplotlib (``labels``: the class names on both axes), write it
    atomically; return the RGB image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(matrix)
    k = len(cm)
    names = labels or [str(i) for i in range(k)]
    slant = max(map(len, names)) > 2  # words, not digits: slanted so neighbours do not overlap
    margin = 0.07 * max(map(len, names)) if slant else 0.0  # inches for the names beside and below
    fig = Figure(figsize=(1.2 + 0.45 * k + margin, 1.0 + 0.45 * k + margin), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(k), labels=names, rotation=30 if slant else 0, ha="right" if slant else "center")
    ax.set_yticks(range(k), labels=names)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return image


def cached_report(run: runs.Run, ckpt: str, split: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The saved eval report if it measured this very checkpoint file with these settings."""
    path = run.eval_report(checkpoint_label(ckpt))
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        stat = checkpoint_path(run, ckpt).stat()
    except (OSError, ValueError):
        return None
    ok = (report.get("version") == REPORT_VERSION and report.get("split") == split
          and report.get("settings") == settings and report.get("ckpt") == ckpt
          and report.get("checkpoint", {}).get("bytes") == stat.st_size
          and report.get("checkpoint", {}).get("mtime_ns") == stat.st_mtime_ns)
    return report if ok else None


__all__ = ["evaluate", "quality", "measure", "load_checked", "load_data", "kind_of", "example_batch", "cached_report",
           "default_settings"]
