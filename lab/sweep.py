"""Hyperparameter search on Optuna (``lab sweep``): every trial is a normal run.

    from lab.sweep import sweep
    result = sweep("gpt-nano", "space.yaml", trials=20, overrides={"trainer.max_steps": 300})
    result.best        # {"trial": 7, "value": 2.01, "params": {"optimizer.lr": 0.0031}, "run": "gpt-nano/2026..."}
    result.command     # "lab fit --config gpt-nano --trainer.max_steps 300 --optimizer.lr 0.0031"
    print(result.text())

    lab sweep --config gpt-nano --space space.yaml --trials 20 [--jobs 2] [--name lr] [--trainer.max_steps 300]

The pieces: ``lab.sweep_space`` (the space file: dotted config fields to ranges or choices, checked
against the config's dataclasses before anything is written), ``lab.sweep_trial`` (the worker loop,
the objective and the pruning callback), ``lab.sweep_study`` (the storage, and the study as rows for
the dashboard and notebooks) and ``lab.sweep_charts`` (those rows as Altair charts).

Each trial trains with ``lab.train.fit`` into its own ``runs/<experiment>/<run_id>/`` (``sweep`` and
``trial`` recorded in its summary.json), so ``lab runs``, the Compare page and the comparer see it.
Trials are ranked by the family's primary metric (``ModelFamily.metric``/``mode``: val/loss, lower
is better; val/accuracy, higher), its best value over the trial's validations; a trial the pruner
gives up on at a validation stops there (successive halving by default, or median; successive halving is
the one that met the benchmark's goal of 40% fewer training steps: benchmarks/README.md).

The study lives in ``runs/<experiment>/sweeps/<name>/study.db`` (SQLite). ``storage`` takes any
SQLAlchemy URL instead, e.g. ``postgresql://user:pass@host/lab`` or ``mysql+pymysql://user:pass@host/lab``:
several machines that run ``lab sweep`` with the same config, space, ``--name`` and ``--storage``
join one study (each needs the database driver installed). Stopping is safe: ``trials=N`` means N
finished (completed + pruned) trials in the study, so running the same command again continues
where it stopped. A trial whose process died (kill -9, out of memory, a reboot) is marked failed --
at once when its process was on this machine (``lab.procs``), after Optuna's heartbeat grace period
otherwise -- and its parameters are tried again as a new trial. ``jobs=K`` runs K worker processes
on the same storage.
"""

from __future__ import annotations

import multiprocessing
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import yaml

from lab import procs, runs
from lab.config import PRESETS_DIR, Config, config_diff, load_config, parse_overrides, to_yaml
from lab.errors import ConfigError, LabError, require
from lab.families import family_of
from lab.fileio import atomic_write_text, check_writable
from lab.sweep_space import Space, load_space
from lab.sweep_study import (BASE_FILE, SPACE_FILE, STUDY_FILE, counts, quiet_optuna, redacted, sqlite_url,
                             storage as open_storage)
from lab.sweep_trial import Plan, work, worker_main

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")


@dataclass
class SweepOptions:
    """How a sweep runs (the ``lab sweep`` flags besides the config and the space)."""

    trials: int = 20
    """Finished trials (completed + pruned) the study should hold; a resumed sweep runs only the rest."""
    jobs: int = 1
    """Worker processes on this machine, each training one trial at a time on the same storage."""
    name: str | None = None
    """The study's name and folder, runs/<experiment>/sweeps/<name>/; default: the space file's name."""
    sampler: Any = "tpe"
    """tpe (Optuna's tree-structured Parzen estimator) or random (for comparison); or an Optuna sampler."""
    pruner: Any = "halving"
    """halving (successive halving: past each rung only the best third go on), median (stop a trial worse
    than the median at the same step), none; or an Optuna pruner."""
    storage: str | None = None
    """An SQLAlchemy URL several machines share (postgresql://..., mysql://...); default: SQLite in the sweep folder."""
    seed: int | None = None
    """The sampler's seed (each worker's own is drawn from it); default: the config's seed (``--sampler_seed``)."""

    def validate(self) -> None:
        require(isinstance(self.trials, int) and self.trials >= 1, "--trials", self.trials,
                "a whole number >= 1 (finished trials: completed + pruned)")
        require(isinstance(self.jobs, int) and self.jobs >= 1, "--jobs", self.jobs,
                "a whole number >= 1 (worker processes)")
        require(not isinstance(self.sampler, str) or self.sampler in SAMPLERS, "--sampler", self.sampler,
                f"one of {', '.join(SAMPLERS)}")
        require(not isinstance(self.pruner, str) or self.pruner in PRUNERS, "--pruner", self.pruner,
                f"one of {', '.join(PRUNERS)}")
        require(self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**32 - 1024), "--sampler_seed",
                self.seed, "a whole number in [0, 2**32 - 1024)")
        require(self.storage is None or "://" in str(self.storage), "--storage", self.storage,
                "a database URL such as postgresql://user@host/lab (default: SQLite in the sweep folder)")


@dataclass
class SweepResult:
    """A sweep's outcome: counts by state, the best trial and the ``lab fit`` line that trains it again."""

    name: str
    """The study's name."""
    path: Path
    """The sweep folder, runs/<experiment>/sweeps/<name>/."""
    storage: str
    """The study's database URL (password hidden)."""
    metric: str
    """What the trials are ranked by: the family's primary metric."""
    direction: str
    """minimize or maximize."""
    counts: dict[str, int]
    """Trials by state: complete, pruned, fail, running, waiting."""
    best: dict[str, Any] | None
    """The best completed trial: ``{"trial", "value", "params", "run"}``; None before one completes."""
    command: str | None
    """The ``lab fit`` line that trains the best trial's configuration again."""
    study: Any = field(repr=False, default=None)
    """The ``optuna.Study`` (for ``lab.sweep_charts`` or Optuna's own tools)."""

    def text(self) -> str:
        """What ``lab sweep`` prints at the end."""
        c = self.counts
        where = self.path / STUDY_FILE if self.storage.startswith("sqlite") else self.storage
        lines = [f"sweep {self.name}: {c['complete'] + c['pruned']} finished ({c['complete']} completed, "
                 f"{c['pruned']} pruned), {c['fail']} failed; study {where}"]
        if self.best is None:
            lines.append("no trial completed yet: run the same command again to continue")
        else:
            b = self.best
            lines += [f"best: trial {b['trial']}, {self.metric} {b['value']:.4f} ({b['run']})",
                      f"train it again: {self.command}"]
        return "\n".join(lines)


def sweep(config: str | Path, space: str | Path | Mapping[str, Any], trials: int = 20, *,
          overrides: Sequence[str] | Mapping[str, Any] = (), runs_root: str | Path | None = None,
          jobs: int = 1, name: str | None = None, sampler: Any = "tpe", pruner: Any = "halving",
          storage: str | None = None, seed: int | None = None, enqueue: Sequence[Mapping[str, Any]] = (),
          echo: Callable[[str], None] | None = print) -> SweepResult:
    """Search ``space`` around ``config`` (preset or YAML, plus dotted ``overrides``) until the study
    holds ``trials`` finished trials; returns the outcome.

    Everything is checked before anything is written (the options, the config, each field and end
    value of the space, a study of the same name with another config or space). ``enqueue``:
    parameter sets to try first, once, when the study is created (e.g. the preset's own values).
    ``echo`` gets one line per finished trial (None: quiet).
    """
    opts = SweepOptions(trials=trials, jobs=jobs, name=name, sampler=sampler, pruner=pruner, storage=storage,
                        seed=seed)
    opts.validate()
    pairs = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    base = load_config(config, pairs)
    _check_base(base)
    checked = load_space(space, base)
    opts.name = opts.name or _default_name(space)
    folder = runs.sweep_dir(runs_root, base.experiment, opts.name)
    url = opts.storage or sqlite_url(folder)
    fam = family_of(base)
    stored = _stored_attrs(url, opts.name, folder)
    if stored is not None:
        _check_same(stored, base, checked, opts.name, fam.metric)
    check_writable(folder)  # nothing is written before this line
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / BASE_FILE, to_yaml(base))
    atomic_write_text(folder / SPACE_FILE, yaml.safe_dump(checked.spec(), sort_keys=False))
    with quiet_optuna():
        study = optuna.create_study(storage=open_storage(url), study_name=opts.name, load_if_exists=True,
                                    direction="minimize" if fam.mode == "min" else "maximize")
        if stored is None:
            for key, value in {"config": base.to_dict(), "space": checked.spec(), "metric": fam.metric}.items():
                study.set_user_attr(key, value)
            for params in enqueue:
                study.enqueue_trial(dict(params))
        study.set_user_attr("trials", opts.trials)
    root = str(runs.runs_root(runs_root).resolve())
    plan = Plan(name=opts.name, folder=str(folder.resolve()), storage=url, root=root, trials=opts.trials,
                jobs=opts.jobs, sampler=opts.sampler, pruner=opts.pruner,
                seed=base.seed if opts.seed is None else opts.seed, space=checked.spec())
    if opts.jobs == 1:
        with quiet_optuna():
            work(plan, 0, echo)
    else:
        _run_workers(plan)
    done = result(plan, fam.metric)
    if done.best is not None:
        done.command = _fit_command(config, pairs, folder, runs_root, done.best["params"])
    return done


def _check_base(base: Config) -> None:
    """What a sweep's trials need of the config: one device each, and validations to rank them by."""
    t = base.trainer
    if t.devices != 1 or t.num_nodes != 1 or t.strategy != "auto":
        raise LabError("a sweep trains each trial on one device: set --trainer.devices 1 --trainer.num_nodes 1 "
                       "--trainer.strategy auto (use --jobs to train several trials at once)")
    if t.val_check_interval > t.max_steps:
        raise ConfigError("trainer.val_check_interval", t.val_check_interval,
                          f"a whole number <= trainer.max_steps={t.max_steps}",
                          "trials are ranked, and pruned, at their validations")


def _default_name(space: str | Path | Mapping[str, Any]) -> str:
    """The space file's name (``lr.yaml`` -> ``lr``): running the same command again resumes the same study."""
    if isinstance(space, Mapping):
        return "sweep"
    return re.sub(r"[^A-Za-z0-9._-]", "-", Path(space).stem).lstrip(".-_")[:64] or "sweep"


def _stored_attrs(url: str, name: str, folder: Path) -> dict[str, Any] | None:
    """The user attributes of study ``name`` if the storage already holds it; None (nothing written) otherwise."""
    if url == sqlite_url(folder) and not (folder / STUDY_FILE).is_file():
        return None  # the usual case, a new sweep: opening the storage would create the file
    store = open_storage(url)
    if name not in optuna.study.get_all_study_names(store):
        return None
    return optuna.load_study(study_name=name, storage=store).user_attrs


def _check_same(stored: dict[str, Any], base: Config, space: Space, name: str, metric: str) -> None:
    """A study continues only with the config and space it was started with: its trials must compare."""
    differ = list(config_diff([stored.get("config", {}), base.to_dict()]))
    advice = f"give the same ones to continue sweep {name}, or another --name for a new sweep"
    if differ:
        raise LabError(f"sweep {name} was started with another config ({', '.join(differ[:5])} differ): {advice}")
    if stored.get("space") != yaml.safe_load(yaml.safe_dump(space.spec())):
        raise LabError(f"sweep {name} was started with another search space ({stored.get('space')}): {advice}")
    if stored.get("metric", metric) != metric:
        raise LabError(f"sweep {name} ranks trials by {stored.get('metric')}, not {metric}: {advice}")


def _fit_command(config: str | Path, pairs: Mapping[str, Any], folder: Path, runs_root: Any,
                 params: Mapping[str, Any]) -> str:
    """The ``lab fit`` line that trains ``params`` again: a preset by name with the sweep's overrides (those
    the parameters do not replace), else the sweep's frozen base.yaml, which holds the overrides already."""
    preset = isinstance(config, str) and not Path(config).suffix and (PRESETS_DIR / f"{config}.yaml").is_file()
    line = ["lab", "fit", "--config", str(config) if preset else str(folder / BASE_FILE)]
    kept = {k: v for k, v in pairs.items() if k not in params} if preset else {}
    line += [flag for key, value in {**kept, **params}.items() for flag in (f"--{key}", _text(value))]
    if runs_root is not None:
        line += ["--runs_dir", str(runs_root)]
    return shlex.join(line)


def _text(value: Any) -> str:
    """A value as a dotted flag takes it: the config reads it back exactly (floats in full)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (list, tuple)):
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    return repr(value) if isinstance(value, float) else str(value)


def _run_workers(plan: Plan) -> None:
    """``plan.jobs`` worker processes (spawned: a fresh interpreter each, as on every OS), then wait.

    Each uses an equal share of the CPU threads; on GPUs, worker i sees GPU i modulo their count.
    Ctrl-C reaches the workers too (same process group): each stops its trial cleanly.
    """
    plan.parent = procs.identity()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=worker_main, args=(plan, i), name=f"lab-sweep-{i}") for i in range(plan.jobs)]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
    except KeyboardInterrupt:
        for w in workers:
            w.join(timeout=120)
        raise
    codes = [w.exitcode for w in workers]
    if all(code for code in codes):
        raise LabError(f"every worker of sweep {plan.name} stopped early (exit codes {codes}): see their lines "
                       "above; the study keeps its finished trials, run the same command to continue")


def result(plan: Plan, metric: str) -> SweepResult:
    """The study's counts and best trial (``sweep`` adds the ``lab fit`` line that trains it again)."""
    with quiet_optuna():
        study = optuna.load_study(study_name=plan.name, storage=open_storage(plan.storage))
        found = counts(study)
        best = None
        if found["complete"]:
            b = study.best_trial
            best = {"trial": b.number, "value": b.value, "params": dict(b.params), "run": b.user_attrs.get("run")}
    return SweepResult(name=plan.name, path=Path(plan.folder), storage=redacted(plan.storage), metric=metric,
                       direction=study.direction.name.lower(), counts=found, best=best, command=None, study=study)
