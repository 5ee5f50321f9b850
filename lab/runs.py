"""The runs folder: the only module that knows its layout.

    runs/<experiment>/<run_id>/
        config.yaml            the fully resolved config
        events.out.tfevents.*  TensorBoard scalars, text samples, hparams
        checkpoints/           best.ckpt, last.ckpt
        tokenizer.json         text runs: what sampling and evaluation decode with
        summary.json           status, times, metrics, parameter count, throughput, environment
        reports/               evaluation reports: eval-<ckpt>.json, confusion-<ckpt>.png
        compressed/<method>/   compressed artifacts with report.json; comparison.json, pareto.png
        export/<format>/       deployable artifacts (onnx, torchscript, safetensors)

Usage::

    from lab import runs
    for run in runs.list_runs("runs"):
        print(run.name, run.status, run.summary.get("best", {}).get("val/loss"))
    curves = runs.scalars(runs.load_run("runs/gpt-nano/20261128-120000-ab12"))
    curves["train/loss"]       # [(step, wall_time, value), ...]

Every JSON/YAML file here is written atomically (temp file in the same folder, fsync,
``os.replace``) so a crash never leaves half a file behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from lab import procs
from lab.errors import LabError
from lab.fileio import atomic_write_text, write_json

SUMMARY, CONFIG, TOKENIZER = "summary.json", "config.yaml", "tokenizer.json"
STATUSES = ("running", "completed", "failed", "interrupted")
"""What summary.json may say. ``Run.status`` adds ``crashed``: it says running, but its process is gone."""
CRASHED = "crashed"
# libyaml's safe loader when PyYAML was built with it: same result, ~10x faster, and listing
# hundreds of runs (lab runs, the dashboard) is mostly parsing config.yaml files.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def runs_root(root: str | Path | None = None) -> Path:
    """The runs root: ``root`` if given, else ``$LAB_RUNS_DIR``, else ``./runs``."""
    return Path(root if root is not None else os.environ.get("LAB_RUNS_DIR", "runs"))


@dataclass
class Run:
    """One run folder and what it says about itself."""

    path: Path
    """The run folder, runs/<experiment>/<run_id>."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved config (plain data) the run was started with."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The contents of summary.json."""

    @property
    def name(self) -> str:
        """``<experiment>/<run_id>``: how the CLI and the dashboard name a run."""
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def experiment(self) -> str:
        return self.path.parent.name

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        """summary.json's status, or ``crashed`` for a ``running`` run whose process is gone.

        A SIGKILL, the out-of-memory killer or a reboot leave no chance to write an end; the
        process identity ``fit`` recorded tells (``lab.procs``). Its ``last.ckpt`` resumes it.
        """
        status = self.summary.get("status", "unknown")
        return CRASHED if status == "running" and self.process_alive() is False else status

    def process_alive(self) -> bool | None:
        """Whether the process that wrote ``running`` still lives (``lab.procs.alive``); None if unknown."""
        return procs.alive(self.summary.get("process"))

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str = "best") -> Path:
        """``best`` or ``last`` checkpoint path (it may not exist yet)."""
        return self.checkpoints_dir / f"{which}.ckpt"

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def reports_dir(self) -> Path:
        return self.path / "reports"

    def compressed_dir(self, method: str) -> Path:
        return self.path / "compressed" / method

    @property
    def compressed_root(self) -> Path:
        """``compressed/``: one folder per method, plus comparison.json and pareto.png."""
        return self.path / "compressed"

    def eval_report(self, label: str) -> Path:
        """``reports/eval-<label>.json`` (label: best, last, or a checkpoint file's stem)."""
        return self.reports_dir / f"eval-{label}.json"

    def export_dir(self, fmt: str) -> Path:
        """``export/<fmt>/``: a self-contained deployable artifact (onnx, torchscript, safetensors)."""
        return self.path / "export" / fmt


def status_note(run: Run) -> str | None:
    """What to do about a run that stopped early (crashed or interrupted); None otherwise."""
    resume = f"`lab fit --resume {run.name}` continues it from its newest checkpoint"
    status = run.status
    if status == CRASHED:
        return (f"{run.name} crashed: its process ({procs.describe(run.summary.get('process'))}) is gone without "
                f"a word (killed with kill -9, out of memory, or the machine restarted); {resume}")
    if status == "interrupted":
        return f"{run.name} was interrupted (Ctrl-C, SIGTERM or a Stop button) after saving last.ckpt; {resume}"
    return None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def create_run(root: str | Path | None, experiment: str, config: dict[str, Any]) -> Run:
    """Make a fresh ``runs/<experiment>/<run_id>/`` and write its config.yaml.

    The id is a UTC timestamp plus random hex; the folder is made with an exclusive
    ``mkdir`` so two runs started at the same moment never share a folder.
    """
    base = runs_root(root)
    if base.exists() and not base.is_dir():
        raise LabError(f"runs root {base} is a file, not a folder: pass another --runs_dir or remove it")
    exp_dir = base / experiment
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabError(f"cannot create {exp_dir}: {e.strerror}; choose a writable runs folder (LAB_RUNS_DIR)")
    for _ in range(100):
        run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"
        try:
            (exp_dir / run_id).mkdir()
        except FileExistsError:
            continue
        run = Run(exp_dir / run_id, config=config)
        atomic_write_text(run.path / CONFIG, yaml.safe_dump(config, sort_keys=False))
        return run
    raise LabError(f"could not find a free run id under {exp_dir}")  # pragma: no cover


def update_summary(run: Run, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into summary.json (atomically) and return the new summary."""
    if "status" in fields and fields["status"] not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {fields['status']!r}")
    run.summary = {**run.summary, **fields}
    write_json(run.path / SUMMARY, run.summary)
    return run.summary


def load_run(path: str | Path) -> Run:
    """Read a run folder (config.yaml and summary.json; either may be missing while it starts)."""
    path = Path(path)
    if not path.is_dir() or not ((path / CONFIG).exists() or (path / SUMMARY).exists()):
        raise LabError(f"{path} is not a run folder (no {CONFIG} or {SUMMARY}); `lab runs` lists the runs")
    config = yaml.load((path / CONFIG).read_text(encoding="utf-8"), Loader=_YAML_LOADER) if (path / CONFIG).exists() else {}
    try:
        summary = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        summary = {}
    return Run(path, config=config or {}, summary=summary)


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Every run under the root, oldest first (by run id, which starts with the UTC time)."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    found = []
    for exp in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for run_dir in exp.iterdir():
            if run_dir.is_dir() and ((run_dir / CONFIG).exists() or (run_dir / SUMMARY).exists()):
                found.append(load_run(run_dir))
    return sorted(found, key=lambda r: (r.run_id, r.experiment))


def resolve_run(name: str | Path, root: str | Path | None = None) -> Run:
    """Find a run by ``<experiment>/<run_id>``, a bare run id, a path, or ``last``.

    The result must lie inside the runs root: ``..``, absolute paths elsewhere, URL-encoded
    characters, NUL bytes and symlinks pointing out of the root are refused.
    """
    base = runs_root(root).resolve()
    text = str(name)
    if "\x00" in text:
        raise LabError("run name contains a NUL byte")
    if re.search(r"%[0-9A-Fa-f]{2}", text):
        # Paths are never URL-decoded here; refusing "%2e%2e" keeps a decoding layer in front
        # (a browser, the dashboard's URL) from smuggling ".." past this check.
        raise LabError(f"run name {text!r} contains URL-encoded characters: give the plain name from `lab runs`")
    runs = list_runs(base)
    if text == "last":
        if not runs:
            raise LabError(f"no runs under {base}: train one with `lab fit` or `lab quickstart`")
        return runs[-1]
    candidate = Path(text)
    if not candidate.is_absolute():
        direct = base / candidate
        by_id = [r for r in runs if r.run_id == text]
        if not direct.exists() and len(by_id) == 1:
            direct = by_id[0].path
        elif not direct.exists() and candidate.exists():
            direct = candidate  # a path relative to the working directory, e.g. runs/exp/id
        candidate = direct
    resolved = candidate.resolve()
    if resolved != base and base not in resolved.parents:
        raise LabError(f"run {text!r} resolves outside the runs root {base}; name a run listed by `lab runs`")
    return load_run(resolved)


def scalars(run: Run | str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar curve of a run: ``{tag: [(step, wall_time, value), ...]}``.

    Read with TensorBoard's event-processing API; a run still being written, or whose
    last record is truncated, yields every complete record.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = run.path if isinstance(run, Run) else Path(run)
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    try:
        acc.Reload()
    except Exception:  # a truncated record at the end of a file being written
        pass
    return {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}
