"""The runs folder: the only module that knows its layout.

    runs/<experiment>/<run_id>/
        config.yaml            the fully resolved config
        events.out.tfevents.*  TensorBoard scalars, text samples, hparams
        checkpoints/           best.ckpt, last.ckpt
        tokenizer.json         text runs: what sampling and evaluation decode with
        summary.json           status, times, metrics, parameter count, throughput, environment
        reports/               evaluation reports: eval-<ckpt>.json, confusion-<ckpt>.png; explain/ (lab explain)
        compressed/<method>/   compressed artifacts with report.json; comparison.json, pareto.png
        export/<format>/       deployable artifacts (onnx, torchscript, safetensors)
    runs/<experiment>/sweeps/<name>/   a hyperparameter search (lab.sweep): study.db, base.yaml, space.yaml

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
from lab.tfevents import read_scalars

SUMMARY, CONFIG, TOKENIZER = "summary.json", "config.yaml", "tokenizer.json"
STATUSES = ("running", "completed", "failed", "interrupted")
"""What summary.json may say. ``Run.status`` adds ``crashed``: it says running, but its process is gone."""
CRASHED = "crashed"
UNREADABLE = "unreadable"
"""``Run.status`` of a folder the lab cannot read (corrupt files) or refuses (a link out of the root)."""
SWEEPS = "sweeps"
"""``runs/<experiment>/sweeps/<name>/``: a hyperparameter search's study (``lab.sweep``), never a run;
its trials are ordinary runs beside it."""
SWEEP_STUDY = "study.db"
"""A sweep folder's SQLite study (Optuna's storage): what makes a folder under ``sweeps/`` a sweep."""
# libyaml's safe loader when PyYAML was built with it: same result, ~10x faster, and listing
# hundreds of runs (lab runs, the dashboard) is mostly parsing config.yaml files.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


RUNS_DIR_ENV = "LAB_RUNS_DIR"


def runs_root(root: str | Path | None = None) -> Path:
    """The runs root, by one rule everywhere (CLI, notebooks, widgets, dashboard):

    ``root`` if given, else ``$LAB_RUNS_DIR``, else ``runs/`` of the lab's repository when the
    working directory is inside it (a kernel in ``notebooks/`` and a terminal at the top see
    the same runs), else ``./runs``.
    """
    if root is not None:
        return Path(root)
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    here = Path.cwd()
    for folder in (here, *here.parents):
        if _is_lab_repository(folder):
            return folder / "runs"
    return Path("runs")


def _is_lab_repository(folder: Path) -> bool:
    """The lab's own checkout: its pyproject.toml names the package and ``lab/`` sits beside it."""
    try:
        return (folder / "lab" / "runs.py").is_file() and \
            'name = "large-model-lab"' in (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False


@dataclass
class Run:
    """One run folder and what it says about itself."""

    path: Path
    """The run folder, runs/<experiment>/<run_id>."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved config (plain data) the run was started with."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The contents of summary.json."""
    problem: str | None = None
    """Why this folder cannot be used, in one line (``unreadable: ...``, ``refused: ...``); None when it can.

    Listings keep such runs as one row each, so one corrupt run never hides the others."""

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
        if self.problem is not None:
            return UNREADABLE
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

    @property
    def explain_dir(self) -> Path:
        """``reports/explain/``: what ``lab explain`` writes (PNGs and a JSON report per explained input)."""
        return self.reports_dir / "explain"

    def eval_report(self, label: str) -> Path:
        """``reports/eval-<label>.json`` (label: best, last, or a checkpoint file's stem)."""
        return self.reports_dir / f"eval-{label}.json"

    def export_dir(self, fmt: str) -> Path:
        """``export/<fmt>/``: a self-contained deployable artifact (onnx, torchscript, safetensors)."""
        return self.path / "export" / fmt


def status_note(run: Run) -> str | None:
    """What to do about a run that stopped early (crashed, interrupted) or cannot be read; None otherwise.

    Resuming is offered only when the run has a checkpoint to resume from.
    """
    status = run.status
    if status == UNREADABLE:
        return f"{run.name} is skipped, {run.problem}"
    if status not in (CRASHED, "interrupted"):
        return None
    if any(run.checkpoint(w).is_file() and run.checkpoint(w).stat().st_size > 0 for w in ("last", "best")):
        advice = f"`lab fit --resume {run.name}` continues it from its newest checkpoint"
    else:
        advice = (f"it saved no checkpoint before it stopped, so there is nothing to resume: start it again with "
                  f"`lab fit --config {run.path / CONFIG}`")
    if status == CRASHED:
        return (f"{run.name} crashed: its process ({procs.describe(run.summary.get('process'))}) is gone without "
                f"a word (killed with kill -9, out of memory, or the machine restarted); {advice}")
    return f"{run.name} was interrupted (Ctrl-C, SIGTERM or a Stop button); {advice}"


LINEAGE_KINDS = {"hub": "Hugging Face Hub", "folder": "Hugging Face folder", "run": "lab run"}
"""What ``summary.json``'s ``lineage.kind`` says a run started from (``lab.hub`` writes it)."""


def lineage(run: Run) -> str | None:
    """Where the run's weights started from, in one line; None for a run from random weights.

        lineage(run)   # "gpt-nano/20261202-101500 (lab run, best.ckpt)"
    """
    origin = run.summary.get("lineage")
    if not isinstance(origin, dict) or not origin.get("source"):
        return None
    kind = LINEAGE_KINDS.get(str(origin.get("kind")), str(origin.get("kind") or "pretrained"))
    # What pins the source: a hub snapshot's commit, a weights file's digest, a run's checkpoint.
    pins = [str(origin[k])[:12] for k in ("commit", "sha256") if origin.get(k)]
    pins += [str(origin[k]) for k in ("checkpoint",) if origin.get(k)]
    return f"{origin['source']} ({', '.join([kind, *pins])})"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _next_run_id(base: Path) -> str:
    """``<UTC second>-<4 hex digits>``, sorting after every run already started in that second.

    Runs are listed, and ``last`` resolved, by id. With a random suffix, runs begun within
    the same second (a sweep's tiny trials, two quick ``lab fit``) listed in a random order,
    so ``last`` could name an older one. The suffix is random (two processes rarely pick the
    same) but above the second's highest, in any experiment; when a second is full it waits.
    """
    while True:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        taken = [int(d.name[-4:], 16) for d in base.glob(f"*/{stamp}-" + "[0-9a-f]" * 4)]
        low = max(taken, default=-1) + 1
        if low < 0x10000:
            return f"{stamp}-{low + secrets.randbelow(min(0x1000, 0x10000 - low)):04x}"
        time.sleep(0.05)  # pragma: no cover - 4096 or more runs begun in one second


def create_run(root: str | Path | None, experiment: str, config: dict[str, Any]) -> Run:
    """Make a fresh ``runs/<experiment>/<run_id>/`` and write its config.yaml.

    The id is a UTC timestamp plus hex that orders runs begun in the same second
    (``_next_run_id``); the folder is made with an exclusive ``mkdir`` so two runs started
    at the same moment never share a folder.
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
        run_id = _next_run_id(base)
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


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except UnicodeDecodeError:
        raise LabError(f"unreadable: {path} is not UTF-8 text")
    except yaml.YAMLError as e:
        # The safe loader refuses !!python tags too: the same one line as a syntax error.
        raise LabError(f"unreadable: {path} is not valid YAML ({' '.join(str(e).split())[:160]})")
    except OSError as e:
        raise LabError(f"unreadable: {path}: {e.strerror}")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise LabError(f"unreadable: {path} holds a {type(config).__name__}, not a mapping of config sections")
    return config


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}  # a run still starting
    except UnicodeDecodeError:
        raise LabError(f"unreadable: {path} is not UTF-8 text")
    except json.JSONDecodeError:
        return {}  # only ever half-written by a foreign tool: the lab writes it atomically
    except OSError as e:
        raise LabError(f"unreadable: {path}: {e.strerror}")
    if not isinstance(summary, dict):
        raise LabError(f"unreadable: {path} holds a JSON {type(summary).__name__}, not an object")
    return summary


def load_run(path: str | Path) -> Run:
    """Read a run folder (config.yaml and summary.json; either may be missing while it starts).

    A corrupt file (a YAML tag or syntax error, binary bytes, summary.json of the wrong shape)
    is a ``LabError`` of one line starting ``unreadable:``.
    """
    path = Path(path)
    if not path.is_dir() or not ((path / CONFIG).exists() or (path / SUMMARY).exists()):
        raise LabError(f"{path} is not a run folder (no {CONFIG} or {SUMMARY}); `lab runs` lists the runs")
    config = _read_config(path / CONFIG) if (path / CONFIG).exists() else {}
    return Run(path, config=config, summary=_read_summary(path / SUMMARY))


def _outside(path: Path, base: Path) -> bool:
    resolved = path.resolve()
    return resolved != base and base not in resolved.parents


def _listed(run_dir: Path, base: Path) -> Run:
    """One listing entry: the run, or a Run whose ``problem`` says why it cannot be used."""
    if _outside(run_dir, base):
        return Run(run_dir, problem=f"refused: links to {run_dir.resolve()}, outside the runs root {base}")
    try:
        return load_run(run_dir)
    except LabError as e:
        return Run(run_dir, problem=str(e))


def _run_dirs(base: Path) -> list[Path]:
    """Folders that look like runs (they hold config.yaml or summary.json), by experiment."""
    found = []
    for exp in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            children = list(exp.iterdir())
        except OSError:
            continue
        found += [d for d in children if d.is_dir() and d.name != SWEEPS
                  and ((d / CONFIG).exists() or (d / SUMMARY).exists())]
    return found


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def sweep_dir(root: str | Path | None, experiment: str, name: str) -> Path:
    """``runs/<experiment>/sweeps/<name>/``: the study (``study.db``), its base config and space.

    The name becomes a folder: letters, digits, ``.``, ``_`` and ``-`` only (no ``..`` or ``/``).
    """
    for what, value in (("experiment", experiment), ("sweep name", name)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise LabError(f"{what} {value!r} is not a valid name: use letters, digits, '.', '_' or '-' "
                           "(up to 64, starting with a letter or digit)")
    return runs_root(root) / experiment / SWEEPS / name


def list_sweeps(root: str | Path | None = None) -> list[Path]:
    """Every sweep folder under the root (those holding a study), by experiment then name."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    return sorted(p.parent for p in base.glob(f"*/{SWEEPS}/*/{SWEEP_STUDY}") if not p.parent.is_symlink()
                  and not _outside(p.parent, base.resolve()))


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Every run under the root, oldest first (by run id, which starts with the UTC time).

    Never fails because of one run: a folder it cannot read, or one that links out of the
    root, comes back with ``problem`` set (status ``unreadable``) and no data from it.
    """
    base = runs_root(root)
    if not base.is_dir():
        return []
    resolved = base.resolve()
    found = [_listed(d, resolved) for d in _run_dirs(base)]
    return sorted(found, key=lambda r: (r.run_id, r.experiment))


def resolve_run(name: str | Path, root: str | Path | None = None) -> Run:
    """Find a run by ``<experiment>/<run_id>``, a bare run id, a path, or ``last``.

    The result must lie inside the runs root: ``..``, absolute paths elsewhere, URL-encoded
    characters, NUL bytes and symlinks pointing out of the root are refused.
    """
    base = runs_root(root).resolve()
    if not base.is_dir():
        raise LabError(f"no runs folder {base}: train a run first (`lab quickstart`) or pass --runs_dir")
    text = str(name)
    if "\x00" in text:
        raise LabError("run name contains a NUL byte")
    if re.search(r"%[0-9A-Fa-f]{2}", text):
        # Paths are never URL-decoded here; refusing "%2e%2e" keeps a decoding layer in front
        # (a browser, the dashboard's URL) from smuggling ".." past this check.
        raise LabError(f"run name {text!r} contains URL-encoded characters: give the plain name from `lab runs`")
    if text == "last":
        # Only the newest readable run is opened: a corrupt older run does not matter here.
        for run_dir in sorted(_run_dirs(base), key=lambda d: (d.name, d.parent.name), reverse=True):
            run = _listed(run_dir, base)
            if run.problem is None:
                return run
        raise LabError(f"no readable runs under {base}: train one with `lab fit` or `lab quickstart`")
    candidate = Path(text)
    if not candidate.is_absolute():
        direct = base / candidate
        if not direct.exists() and "/" not in text and "\\" not in text:
            by_id = [d for d in _run_dirs(base) if d.name == text]  # names only: no other run is read
            if len(by_id) == 1:
                direct = by_id[0]
            elif len(by_id) > 1:
                raise LabError(f"run id {text!r} is in several experiments "
                               f"({', '.join(d.parent.name for d in by_id)}): name it as <experiment>/{text}")
        if not direct.exists() and candidate.exists():
            direct = candidate  # a path relative to the working directory, e.g. runs/exp/id
        candidate = direct
    if _outside(candidate, base):
        raise LabError(f"run {text!r} resolves outside the runs root {base}; name a run listed by `lab runs`")
    return load_run(candidate.resolve())


def scalars(run: Run | str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar curve of a run: ``{tag: [(step, wall_time, value), ...]}``, each step once.

    The one way the lab reads curves (notebooks, widgets, dashboard, tests): ``lab.tfevents``,
    which applies TensorBoard's purges, so a resumed run's curve never folds back. A run still
    being written, or whose last record is truncated, yields every complete record.
    """
    return read_scalars(run.path if isinstance(run, Run) else Path(run))
