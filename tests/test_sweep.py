"""lab sweep: a tiny sweep through the CLI, resume after kill -9, pruning, a classifier family, K workers,
and the bookkeeping that keeps ``--trials N`` exact (dead trials failed and retried, surplus trials refused)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from lab import procs, runs, sweep_study
from lab.cli import main
from lab.config import load_config
from lab.errors import LabError
from lab.sweep import sweep
from lab.sweep_trial import fail_dead_trials, surplus

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"trainer.max_steps": 10, "trainer.val_check_interval": 5, "trainer.limit_val_batches": 2,
        "model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32,
        "optimizer.warmup_steps": 2, "trainer.checkpoint_every_n_steps": None}
"""A 1-layer, 32-wide gpt-nano trained 10 steps, validated at 5 and 10: about two seconds a trial."""
SPACE = "optimizer.lr: {low: 1.0e-3, high: 3.0e-2, log: true}\noptimizer.schedule: [cosine, constant]\n"


def flags(overrides: dict) -> list[str]:
    return [x for k, v in overrides.items() for x in (f"--{k}", "null" if v is None else str(v))]


def study_of(root: Path, experiment: str, name: str) -> optuna.Study:
    return sweep_study.open_study(runs.sweep_dir(root, experiment, name))


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


@pytest.mark.slow
def test_tiny_sweep_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "lr.yaml").write_text(SPACE)
    root = tmp_path / "runs"
    line = ["sweep", "--space", str(tmp_path / "lr.yaml"), "--trials", "3", "--runs_dir", str(root), *flags(TINY)]
    assert main(line) == 0
    out = capsys.readouterr().out
    study = study_of(root, "gpt-nano", "lr")  # the space file's name is the study's
    done = finished(study)
    assert len(done) == 3 and len([ln for ln in out.splitlines() if ln.startswith("trial ")]) == 3
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.user_attrs["metric"] == "val/loss"
    # Each trial is a normal run: its own folder and config, sweep and trial in its summary.
    listed = {r.name: r for r in runs.list_runs(root)}
    assert len(listed) == 3  # the sweeps folder is not taken for a run
    for t in done:
        run = listed[t.user_attrs["run"]]
        assert run.status == "completed" and run.summary["sweep"] == "lr" and run.summary["trial"] == t.number
        assert run.config["optimizer"]["lr"] == t.params["optimizer.lr"]
        assert run.config["optimizer"]["schedule"] == t.params["optimizer.schedule"]
        if t.state == TrialState.COMPLETE:  # the value: the best val/loss over its validations
            assert t.value == pytest.approx(min(v for _, _, v in runs.scalars(run)["val/loss"]))
    assert {p.name for p in (root / "gpt-nano" / "sweeps" / "lr").iterdir()} >= {"study.db", "base.yaml", "space.yaml"}
    # The sweep ends with the best trial's `lab fit` line, which trains the same configuration again.
    command = next(ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("train it again: "))
    assert command.startswith("lab fit --config gpt-nano --trainer.max_steps 10 ")
    best = study.best_trial
    assert main(shlex.split(command)[1:]) == 0
    again = runs.list_runs(root)[-1]
    assert again.summary["best"]["val/loss"] == pytest.approx(best.value, rel=1e-4)
    assert again.config == listed[best.user_attrs["run"]].config
    # The same command again: the study already holds 3 finished trials, so nothing trains.
    capsys.readouterr()
    assert main(line) == 0
    assert len(study_of(root, "gpt-nano", "lr").trials) == 3 and "3 finished" in capsys.readouterr().out


@pytest.mark.slow
def _run_status(root: Path, name: str) -> str | None:
    try:
        return runs.resolve_run(name, root).status
    except (LabError, OSError):  # its folder is being made
        return None


def test_resume_after_kill_9(tmp_path: Path) -> None:
    (tmp_path / "lr.yaml").write_text(SPACE)
    root = tmp_path / "runs"
    # Longer trials (60 steps), so that one is surely training when the kill comes.
    line = [sys.executable, "-m", "lab.cli", "sweep", "--space", str(tmp_path / "lr.yaml"), "--trials", "3",
            "--runs_dir", str(root), *flags({**TINY, "trainer.max_steps": 60})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(line, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    victim = None
    while victim is None:
        assert proc.poll() is None and time.time() < deadline, f"the sweep ended before the kill: {proc.stderr.read()}"
        time.sleep(0.2)
        try:
            trials = study_of(root, "gpt-nano", "lr").get_trials(deepcopy=False)
        except LabError:  # no study.db yet, or its tables are there but not the study
            continue
        # A trial is RUNNING in the study until its run has ended and been told; kill one whose run
        # still trains, or the kill can land after the run completed (then it cannot read crashed).
        live = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("run")
                and _run_status(root, t.user_attrs["run"]) == "running"]
        if live and sum(t.state == TrialState.COMPLETE for t in trials) >= 1:
            victim = live[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = {t.number: t.value for t in finished(study_of(root, "gpt-nano", "lr"))}

    out = subprocess.run(line, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    study = study_of(root, "gpt-nano", "lr")
    done = finished(study)
    assert len(done) == 3  # none lost, none counted twice
    assert {t.number: t.value for t in done if t.number in before} == before  # kept as they were
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and "is gone" in killed.user_attrs["error"]
    [retried] = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retried.params == victim.params and retried.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # The killed trial's run reads crashed (its process is gone) and says which trial it was.
    run = runs.resolve_run(victim.user_attrs["run"], root)
    assert run.status == "crashed" and run.summary["sweep"] == "lr" and run.summary["trial"] == victim.number
    assert len(runs.list_runs(root)) == 4


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["median after one trial", "halving"])
def test_pruning_stops_a_trial_with_a_bad_learning_rate(tmp_path: Path, pruner: str) -> None:
    # A good rate first, then one far too low: the pruner stops it at its first validation, and its
    # run records where. Successive halving by its name, as `--pruner halving` gives it: its first
    # rung is the first validation, where the worse of two trials does not go on.
    chosen = optuna.pruners.MedianPruner(n_startup_trials=1) if pruner.startswith("median") else pruner
    result = sweep("gpt-nano", {"optimizer.lr": {"low": 1e-7, "high": 3e-2, "log": True}}, trials=2, overrides=TINY,
                   runs_root=tmp_path, pruner=chosen, echo=None,
                   enqueue=[{"optimizer.lr": 2e-2}, {"optimizer.lr": 1e-7}])
    good, bad = result.study.trials
    assert good.state == TrialState.COMPLETE and bad.state == TrialState.PRUNED
    assert bad.user_attrs["steps"] == 5 and list(bad.intermediate_values) == [5]
    assert bad.intermediate_values[5] > good.intermediate_values[5]
    run = runs.resolve_run(bad.user_attrs["run"], tmp_path)
    assert run.summary["pruned"] == {"step": 5} and run.summary["step"] == 5 and run.status == "completed"
    assert result.counts["complete"] == 1 and result.counts["pruned"] == 1
    assert result.best["trial"] == 0 and "--optimizer.lr 0.02" in result.command


@pytest.mark.slow
def test_a_classifier_family_maximizes_its_accuracy(tmp_path: Path) -> None:
    tiny = {"trainer.max_steps": 10, "trainer.val_check_interval": 5, "trainer.limit_val_batches": 2,
            "trainer.checkpoint_every_n_steps": None}
    result = sweep("digits-cnn", {"optimizer.lr": {"low": 1e-3, "high": 1e-2, "log": True}}, trials=2,
                   overrides=tiny, runs_root=tmp_path, pruner="none", echo=None)
    assert result.metric == "val/accuracy" and result.direction == "maximize"
    for t in result.study.trials:
        curve = runs.scalars(runs.resolve_run(t.user_attrs["run"], tmp_path))["val/accuracy"]
        assert t.value == pytest.approx(max(v for _, _, v in curve))
    assert result.best["value"] == max(t.value for t in result.study.trials)


# One preset per model family; each family is shrunk as tests/test_train.py shrinks it.
FAMILY_PRESETS = ["gpt-nano", "digits-cnn", "digits-vit", "seed-mlp", "sentiment", "recommender-mf",
                  "recommender-two-tower", "speech-cnn"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_every_family_sweeps_by_its_own_primary_metric(tmp_path: Path, preset: str) -> None:
    from test_train import FEW_STEPS, SHRINK

    from lab.families import family_of

    cfg = load_config(preset)
    fam = family_of(cfg)
    overrides = {**SHRINK[cfg.model.name], **FEW_STEPS, "trainer.checkpoint_every_n_steps": None}
    result = sweep(preset, {"optimizer.lr": {"low": 1e-3, "high": 1e-2, "log": True}}, trials=1,
                   overrides=overrides, runs_root=tmp_path, pruner="halving", echo=None)
    assert result.metric == fam.metric and result.direction == ("minimize" if fam.mode == "min" else "maximize")
    (trial,) = result.study.trials
    assert trial.state == TrialState.COMPLETE and list(trial.intermediate_values) == [2, 4]  # each validation
    curve = [v for _, _, v in runs.scalars(runs.resolve_run(trial.user_attrs["run"], tmp_path))[fam.metric]]
    assert trial.value == pytest.approx(min(curve) if fam.mode == "min" else max(curve))


@pytest.mark.slow
def test_two_worker_processes_share_one_study(tmp_path: Path) -> None:
    # The `lab` command in its own process, as a user starts it: spawned workers re-import the
    # parent's __main__, which inside pytest may be whatever script an earlier test ran.
    (tmp_path / "lr.yaml").write_text(SPACE)
    root = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "lab.cli", "sweep", "--space", str(tmp_path / "lr.yaml"), "--trials", "3",
                           "--jobs", "2", "--runs_dir", str(root), *flags(TINY)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study = study_of(root, "gpt-nano", "lr")
    assert len(finished(study)) == 3
    pids = {t.user_attrs["process"]["pid"] for t in study.trials}
    assert len(pids) == 2 and os.getpid() not in pids
    assert "best: trial" in done.stdout


def test_a_study_continues_only_with_its_config_and_space(tmp_path: Path) -> None:
    folder = runs.sweep_dir(tmp_path, "gpt-nano", "lr")
    folder.mkdir(parents=True)
    space = {"optimizer.lr": {"low": 1e-3, "high": 1e-2}}
    study = optuna.create_study(storage=sweep_study.sqlite_url(folder), study_name="lr")
    study.set_user_attr("config", load_config("gpt-nano", TINY).to_dict())
    study.set_user_attr("space", space)
    study.set_user_attr("metric", "val/loss")
    before = (folder / "study.db").read_bytes()
    with pytest.raises(LabError, match=re.escape("another config (optimizer.lr differ)")):
        sweep("gpt-nano", space, trials=1, overrides={**TINY, "optimizer.lr": 5e-3}, runs_root=tmp_path, name="lr")
    with pytest.raises(LabError, match="another search space"):
        sweep("gpt-nano", {"optimizer.lr": {"low": 1e-4, "high": 1e-2}}, trials=1, overrides=TINY, runs_root=tmp_path,
              name="lr")
    assert (folder / "study.db").read_bytes() == before and not runs.list_runs(tmp_path)


def test_options_and_configs_a_sweep_refuses(tmp_path: Path) -> None:
    space = {"optimizer.lr": {"low": 1e-3, "high": 1e-2}}
    cases = [({"trials": 0}, "--trials"), ({"jobs": 0}, "--jobs"), ({"sampler": "grid"}, "--sampler"),
             ({"pruner": "hyperband"}, "--pruner"), ({"name": "../x"}, "sweep name"),
             ({"storage": "not a url"}, "--storage"),
             ({"overrides": {"trainer.devices": 2, "trainer.accelerator": "cpu"}}, "one device"),
             ({"overrides": {"trainer.max_steps": 10}}, "trainer.val_check_interval")]
    for kwargs, needle in cases:
        with pytest.raises(LabError, match=needle):
            sweep("gpt-nano", space, **{"trials": 1, "runs_root": tmp_path, "echo": None, **kwargs})
    assert not tmp_path.joinpath("gpt-nano").exists()


def test_dead_trials_are_failed_and_their_point_queued_again(tmp_path: Path, other_process) -> None:
    study = optuna.create_study(storage=sweep_study.sqlite_url(tmp_path), study_name=tmp_path.name)
    child, ident = other_process
    lr = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)}
    killed, unknown, mine = study.ask(lr), study.ask(lr), study.ask(lr)
    killed.set_user_attr("process", ident)
    mine.set_user_attr("process", procs.identity())  # this process: alive; ``unknown`` says nothing
    assert fail_dead_trials(study, tmp_path) == []  # every process still lives
    child.kill()
    child.wait()
    assert fail_dead_trials(study, tmp_path) == [0]
    assert [t.state for t in study.get_trials()][:3] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING]
    assert "is gone" in study.trials[0].user_attrs["error"]
    [queued] = study.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs["retry_of"] == 0 and queued.system_attrs["fixed_params"] == killed.params
    assert fail_dead_trials(study, tmp_path) == []  # nothing twice


def test_a_trial_beyond_the_budget_is_not_trained(tmp_path: Path) -> None:
    study = optuna.create_study(storage=sweep_study.sqlite_url(tmp_path), study_name=tmp_path.name)
    study.add_trial(optuna.trial.create_trial(value=1.0))
    first, second = study.ask(), study.ask()
    assert not surplus(first, 2)  # 1 finished + none started before it
    assert surplus(second, 2)  # 1 finished + the first one, still running
    study.tell(first, state=TrialState.FAIL)
    assert not surplus(second, 2)  # the first failed: its place is free again


def test_list_runs_ignores_sweep_folders_and_sweep_names_are_checked(tmp_path: Path) -> None:
    folder = runs.sweep_dir(tmp_path, "gpt-nano", "lr")
    assert folder == tmp_path / "gpt-nano" / "sweeps" / "lr"
    folder.mkdir(parents=True)
    (folder / "base.yaml").write_text(yaml.safe_dump({"experiment": "gpt-nano"}))
    (folder.parent / runs.SUMMARY).write_text(json.dumps({"status": "completed"}))  # even beside a summary file
    assert runs.list_runs(tmp_path) == [] and runs.list_sweeps(tmp_path) == []  # no study.db yet
    (folder / "study.db").write_bytes(b"")
    assert runs.list_sweeps(tmp_path) == [folder]
    for bad in ("..", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(LabError, match="not a valid name"):
            runs.sweep_dir(tmp_path, "gpt-nano", bad)


def test_samplers_by_name_are_seeded() -> None:
    from lab.sweep_trial import sampler

    def draws(name: str, seed: int) -> list[float]:
        study = optuna.create_study(sampler=sampler(name, seed))
        return [study.ask().suggest_float("lr", 1e-4, 1e-1, log=True) for _ in range(3)]

    assert isinstance(sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(sampler("tpe", 0), optuna.samplers.TPESampler)
    assert draws("random", 7) == draws("random", 7) != draws("random", 8)
