"""A sweep's trials: the worker loop, the objective, the pruning callback, and dead trials failed.

    from lab.sweep_trial import Plan, work
    work(plan)            # take trials of plan's study until it holds plan.trials finished ones

``lab.sweep.sweep`` builds the ``Plan`` (plain data, so it travels to worker processes) and runs
``work`` in-process or in ``jobs`` spawned workers. One trial is one ``lab.train.fit`` of the base
config with the trial's overrides, into its own run folder. ``Validations`` reports the family's
primary metric to Optuna at each validation and stops a trial the pruner gives up on (optuna-integration's
``PyTorchLightningPruningCallback`` is not used: that package is not on the lab's package index,
and the lab's callback also records which run a trial trained and the best value over validations).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from lab import procs, runs
from lab.config import Config, load_config
from lab.errors import LabError
from lab.families import family_of
from lab.sweep_space import Space, parse_space
from lab.sweep_study import BASE_FILE, FINISHED, quiet_optuna, retry, storage
from lab.train import fit

POLL_S = 2.0
"""How often a worker waiting for other workers' trials looks at the study again."""
MAX_FAILURES_IN_A_ROW = 5
"""A worker stops after this many failed trials in a row: the config or the space is wrong, not the luck."""


@dataclass
class Plan:
    """What every worker needs to run trials of one study (plain data: it travels to worker processes)."""

    name: str
    """The study's name (and its folder's)."""
    folder: str
    """The sweep folder, absolute: base.yaml, space.yaml and (by default) study.db."""
    storage: str
    """The study's database URL."""
    root: str
    """The runs root the trials' runs go to, absolute."""
    trials: int
    """Finished trials (completed + pruned) to reach."""
    jobs: int
    """Worker processes on this machine."""
    sampler: Any
    """tpe, random, or an Optuna sampler."""
    pruner: Any
    """median, halving, none, or an Optuna pruner."""
    seed: int
    """The sampler's seed; each worker's is drawn from it, its index and the trials already in the study."""
    space: dict[str, Any]
    """The checked search space, in the space file's form."""
    parent: dict[str, Any] | None = None
    """The process that started the workers (``lab.procs.identity``): they take no trial once it is gone."""


def work(plan: Plan, worker: int = 0, echo: Callable[[str], None] | None = print) -> None:
    """Take trials of ``plan``'s study until it holds ``plan.trials`` finished ones (one worker's loop).

    Before each trial: fail the running trials whose process is gone (their parameters are queued
    again); wait while the trials running elsewhere could finish the budget; then ask Optuna for one.
    """
    base_path = Path(plan.folder) / BASE_FILE
    base = load_config(base_path)
    fam = family_of(base)
    store = storage(plan.storage)
    # A resumed sweep must not replay the first run's random draws (its first trials again): the
    # sampler's seed also depends on how many trials the study already holds.
    before = len(optuna.load_study(study_name=plan.name, storage=store).get_trials(deepcopy=False))
    seed = int(np.random.SeedSequence([plan.seed, worker, before]).generate_state(1)[0])
    study = optuna.load_study(study_name=plan.name, storage=store, sampler=sampler(plan.sampler, seed),
                              pruner=pruner(plan.pruner, base))
    objective = Objective(plan, base_path, parse_space(plan.space, base), fam.metric, fam.mode)
    failures = 0
    while True:
        if plan.parent is not None and procs.alive(plan.parent) is False:
            return  # the sweep that started this worker was killed: take no new trial
        fail_dead_trials(study, plan.root)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # silent ones (other machines): Optuna's heartbeat
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if done >= plan.trials:
            return
        if done + running >= plan.trials:
            time.sleep(POLL_S)  # the running trials may finish the budget; if one fails, another is needed
            continue
        seen: list[optuna.trial.FrozenTrial] = []
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda s, t: seen.append(t)])
        trial = seen[0]
        if echo is not None:
            echo(trial_line(trial, fam.metric, plan.trials, study))
        failures = failures + 1 if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus") else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise LabError(f"{failures} trials of sweep {plan.name} failed in a row (the last: "
                           f"{trial.user_attrs.get('error', 'no message')}): fix the config or the space; the study "
                           "keeps its finished trials")


def worker_main(plan: Plan, index: int) -> None:
    """A spawned worker process: its share of the machine, then ``work``; exit 2 on a LabError, 130 on Ctrl-C."""
    if torch.cuda.is_available():
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % torch.cuda.device_count())
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.jobs))
    echo = lambda line: print(f"[worker {index}] {line}", flush=True)  # noqa: E731
    try:
        with quiet_optuna():
            work(plan, index, echo)
    except LabError as e:
        echo(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def sampler(name: Any, seed: int) -> optuna.samplers.BaseSampler:
    """tpe or random, seeded; an Optuna sampler object is used as it is."""
    if not isinstance(name, str):
        return name
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials running in other workers count as bad for now, so workers spread out.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def pruner(name: Any, base: Config) -> optuna.pruners.BasePruner:
    """median, halving or none; an Optuna pruner object is used as it is."""
    if not isinstance(name, str):
        return name
    if name == "median":
        # Prune a trial whose best value so far is worse than the median of the others' at the same step,
        # once 5 trials have finished (fewer give no median worth trusting).
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "halving":
        # Rungs at the first validation's step, then x3, x9...: a third of the trials go on past each.
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=base.trainer.val_check_interval,
                                                      reduction_factor=3)
    return optuna.pruners.NopPruner()


def trial_line(trial: optuna.trial.FrozenTrial, metric: str, target: int, study: Any = None) -> str:
    """One line for a finished trial: its state, value, parameters and run."""
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        what = f"completed  {metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else math.nan
        what = f"pruned at step {trial.user_attrs.get('steps', '?')}  {metric} {last:.4f}"
    else:
        what = f"failed: {trial.user_attrs.get('error', 'no message')}"
    done = f"  ({len(study.get_trials(deepcopy=False, states=FINISHED))}/{target} finished)" if study else ""
    return f"trial {trial.number}  {what}  {params}  {trial.user_attrs.get('run', '')}{done}".rstrip()


class Validations(L.Callback):
    """Reports the family's metric to the trial at every validation; stops training when the pruner says so.

    Stopping sets ``trainer.should_stop`` (as early stopping does), so the run closes as any run does
    (``completed``, its checkpoints written); the objective then tells Optuna the trial was pruned.
    """

    def __init__(self, trial: optuna.Trial, metric: str, mode: str) -> None:
        self.trial, self.metric, self.mode = trial, metric, mode
        self.best: float | None = None
        self.pruned_at: int | None = None
        self.run: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = Path(trainer.default_root_dir)  # lab.train roots the Trainer in the run folder
        self.run = f"{path.parent.name}/{path.name}"
        self.trial.set_user_attr("run", self.run)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None or not math.isfinite(float(value)):
            return
        v, step = float(value), trainer.global_step
        better = self.best is None or (v < self.best if self.mode == "min" else v > self.best)
        self.best = v if better else self.best
        self.trial.report(v, step)
        # At the last step there is nothing left to save: the trial completes, with its full value.
        if step < trainer.max_steps and self.trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True


class Objective:
    """One trial: its overrides from the space, a normal ``fit`` with ``Validations``, the best value."""

    def __init__(self, plan: Plan, base_path: Path, space: Space, metric: str, mode: str) -> None:
        self.plan, self.base_path, self.space, self.metric, self.mode = plan, base_path, space, metric, mode

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("process", procs.identity())  # first: a kill from here on is detectable
        if surplus(trial, self.plan.trials):
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("error", "not trained: the budget was already taken by other workers' trials")
            raise LabError("surplus trial")
        try:
            cfg = load_config(self.base_path, self.space.suggest(trial))
        except LabError as e:  # a combination the config refuses (each value alone was checked)
            trial.set_user_attr("error", str(e))
            raise
        watch = Validations(trial, self.metric, self.mode)
        try:
            with quiet_lightning():
                run = fit(cfg, runs_root=self.plan.root, callbacks=[watch], progress=False, test=False)
        except BaseException as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
            tag_run(watch.run, self.plan.name, self.plan.root, trial.number)
            if isinstance(e, KeyboardInterrupt):  # Ctrl-C/SIGTERM: this point was not measured, try it again
                retry(trial.study, trial.params, trial.number)
            raise
        trial.set_user_attr("steps", int(run.summary.get("step") or 0))
        pruned = {"pruned": {"step": watch.pruned_at}} if watch.pruned_at is not None else {}
        runs.update_summary(run, sweep=self.plan.name, trial=trial.number, **pruned)
        if watch.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at step {watch.pruned_at}")
        if watch.best is None:
            raise LabError(f"trial {trial.number} logged no {self.metric}: set trainer.val_check_interval <= "
                           "trainer.max_steps so that it validates")
        return watch.best


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's per-fit info lines (GPU available, max_steps reached) off during a trial; warnings stay."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)


def surplus(trial: optuna.Trial, target: int) -> bool:
    """Whether the finished trials and those that started before this one already make the budget.

    Workers check the counts before they ask for a trial, but two may ask at the same moment: the
    later one (by start time, then number) is not trained, so ``trials=N`` never gives N + 1.
    """
    me = (trial.datetime_start, trial.number)
    others = trial.study.get_trials(deepcopy=False)
    done = sum(t.state in FINISHED for t in others)
    ahead = sum(t.state == TrialState.RUNNING and (t.datetime_start, t.number) < me for t in others)
    return done + ahead >= target


def tag_run(run_name: str | None, sweep_name: str, root: str | Path, number: int) -> None:
    """Record ``sweep`` and ``trial`` in the summary.json of a trial's run that did not close normally."""
    if run_name is None:
        return
    with contextlib.suppress(LabError, OSError):
        runs.update_summary(runs.resolve_run(run_name, root), sweep=sweep_name, trial=number)


def fail_dead_trials(study: Any, root: str | Path) -> list[int]:
    """Mark failed the running trials whose process is gone from this machine; queue their parameters again.

    ``lab.procs`` tells a dead process at once (pid, creation and boot time); trials of other
    machines are left to Optuna's heartbeat. Returns the numbers failed here.
    """
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        ident = t.user_attrs.get("process")
        if procs.alive(ident) is not False:
            continue
        store = study._storage
        try:
            # The attribute first: a finished trial takes no more attributes. Two workers may both
            # write it; only one wins the state change below, and only that one queues the retry.
            store.set_trial_user_attr(t._trial_id, "error", f"its process ({procs.describe(ident)}) is gone: "
                                      "killed (kill -9, out of memory) or the machine restarted")
            if not store.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        failed.append(t.number)
        retry(study, t.params, t.number)
        tag_run(t.user_attrs.get("run"), study.study_name, root, t.number)
    return failed
