"""A sweep's Optuna study: its storage, and what it holds as plain rows (the dashboard and notebooks read these).

    from lab import sweep_study as ss
    ss.list_sweeps("runs")                   # one row per study under the runs root
    study = ss.open_study("runs/gpt-nano/sweeps/lr")
    ss.trials_table(study)                   # one row per trial: state, value, steps, parameters, run, error
    ss.history(study)                        # value and best-so-far by trial number
    ss.importances(study)                    # {"optimizer.lr": 0.81, ...} (fANOVA, completed trials)
    ss.parallel(study, ss.log_scaled(study)) # each completed trial's parameters on 0..1 axes
    ss.intermediate(study)                   # the values reported at each validation (pruning shows here)
    ss.view(study)                           # all of the above in one dict (what the Sweep page caches)

``lab.sweep_charts`` draws these with Altair. The storage is an SQLite file in the sweep folder
(``runs/<experiment>/sweeps/<name>/study.db``) or any SQLAlchemy URL; ``storage`` opens it with
Optuna's heartbeat (a running trial whose process falls silent for ``GRACE_S`` is failed, and its
parameters queued again) and a patient lock timeout, since several processes write to one file.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from lab import runs
from lab.errors import LabError

STUDY_FILE, BASE_FILE, SPACE_FILE = runs.SWEEP_STUDY, "base.yaml", "space.yaml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""What a sweep's ``trials=N`` counts: a failed trial is tried again, it does not use up the budget."""
HEARTBEAT_S, GRACE_S = 20, 120
"""Optuna's heartbeat: a running trial not heard of for GRACE_S seconds is failed (processes on other machines)."""
SQLITE_TIMEOUT_S = 120
"""How long a process waits for SQLite's write lock while another one writes."""
SCHEMA_ATTEMPTS = 3
"""Tries to open a storage whose schema another process is writing at the same moment."""


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial log lines (and tracebacks of failed trials) off: the sweep prints its own line."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def storage(url: str) -> optuna.storages.RDBStorage:
    """The study's database, with heartbeats and a lock timeout; LabError (one line) if it cannot be opened."""
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                      grace_period=GRACE_S, heartbeat_stale_trial_callback=retry_stale)
            except sqlalchemy.exc.IntegrityError:
                # Two processes met a new database at once (a sweep starting while the dashboard or
                # another machine opens it) and both wrote its schema version: the other one won,
                # so the schema is there now and opening again finds it.
                if attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ImportError as e:
        raise LabError(f"--storage {redacted(url)} needs a database driver that is not installed ({e}): install "
                       "it (e.g. pip install psycopg2-binary for PostgreSQL, pymysql for MySQL)") from None
    except Exception as e:  # SQLAlchemy: a malformed URL, a database that cannot be reached or read
        raise LabError(f"cannot open the study storage {redacted(url)} ({type(e).__name__}: "
                       f"{' '.join(str(e).split())[:200]}): check the URL or the file") from None


def sqlite_url(folder: str | Path) -> str:
    """The default storage: ``study.db`` in the sweep folder, by absolute path (workers may start elsewhere)."""
    return f"sqlite:///{Path(folder).resolve().as_posix()}/{STUDY_FILE}"


def redacted(url: str) -> str:
    """A storage URL without its password, for messages."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def retry(study: Any, params: dict[str, Any], number: int) -> None:
    """Queue a trial with the same parameters: an interrupted trial's point is measured after all."""
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": number})


def retry_stale(study: Any, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's heartbeat failed ``trial`` (its process fell silent, on any machine): try its point again."""
    retry(study, trial.params, trial.number)


def open_study(folder: str | Path) -> Any:
    """The Optuna study of a sweep folder (``runs/<experiment>/sweeps/<name>/``), for reading."""
    folder = Path(folder)
    if not (folder / STUDY_FILE).is_file():
        raise LabError(f"{folder} holds no study ({STUDY_FILE}): start one with `lab sweep`")
    with quiet_optuna():
        try:
            return optuna.load_study(study_name=folder.name, storage=storage(sqlite_url(folder)))
        except KeyError:
            raise LabError(f"{folder / STUDY_FILE} holds no study named {folder.name}: it was not written by "
                           "`lab sweep`; remove it or start the sweep again") from None


def signature(root: str | Path | None = None) -> tuple:
    """(sweep folder, study.db mtime and size) for every sweep: changes whenever a study is written (a cache key)."""
    out = []
    for folder in runs.list_sweeps(root):
        try:
            st = (folder / STUDY_FILE).stat()
            out.append((str(folder), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(folder), 0, -1))
    return tuple(out)


def counts(study: Any) -> dict[str, int]:
    """Trials by state: ``{"complete": 12, "pruned": 6, "fail": 1, "running": 1, "waiting": 0}``."""
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


def list_sweeps(root: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per study under the runs root: its name, metric, trial counts and best value.

    A study that cannot be read is a row with ``problem`` set, never an exception.
    """
    rows = []
    for folder in runs.list_sweeps(root):
        row: dict[str, Any] = {"sweep": f"{folder.parent.parent.name}/{folder.name}", "path": str(folder)}
        try:
            study = open_study(folder)
            c = counts(study)
            complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
            best = (min if study.direction.name == "MINIMIZE" else max)((t.value for t in complete), default=None)
            row.update(metric=study.user_attrs.get("metric"), direction=study.direction.name.lower(),
                       finished=c["complete"] + c["pruned"], complete=c["complete"], pruned=c["pruned"],
                       failed=c["fail"], running=c["running"], target=study.user_attrs.get("trials"), best=best)
        except LabError as e:
            row["problem"] = str(e)
        rows.append(row)
    return rows


def trials_table(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, steps trained, each parameter, the run, the error."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"trial": t.number, "state": t.state.name.lower(), "value": t.value,
               "steps": t.user_attrs.get("steps"), **t.params, "run": t.user_attrs.get("run"),
               "error": t.user_attrs.get("error")}
        if t.state == TrialState.PRUNED and t.intermediate_values:
            row["value"] = t.intermediate_values[max(t.intermediate_values)]  # the last value it reported
        rows.append(row)
    return rows


def history(study: Any) -> list[dict[str, Any]]:
    """Completed and pruned trials by number: their value, and the best completed value so far."""
    better = min if study.direction.name == "MINIMIZE" else max
    best: float | None = None
    rows = []
    for row in trials_table(study):
        if row["state"] not in ("complete", "pruned") or row["value"] is None:
            continue
        if row["state"] == "complete":
            best = row["value"] if best is None else better(best, row["value"])
        rows.append({"trial": row["trial"], "value": row["value"], "state": row["state"], "best": best})
    return rows


def importances(study: Any) -> dict[str, float]:
    """Each parameter's share of the variance of the value (Optuna's fANOVA over completed trials).

    Empty when fewer than two trials completed or only one parameter varies: nothing to apportion.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = {k for k in {k for t in complete for k in t.params} if len({repr(t.params.get(k)) for t in complete}) > 1}
    if len(complete) < 2 or not varied:
        return {}
    try:
        with quiet_optuna(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError):  # e.g. parameters that appear in too few trials
        return {}
    return {k: float(v) for k, v in found.items()}


def log_scaled(study: Any) -> tuple[str, ...]:
    """The parameters the space searches in log space (charts draw them on log axes)."""
    space = study.user_attrs.get("space") or {}
    return tuple(k for k, v in space.items() if isinstance(v, dict) and v.get("log"))


def parallel(study: Any, log_scaled: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Long rows for parallel coordinates: each completed trial's parameters placed on 0..1 axes.

    Numbers are scaled between the lowest and highest value tried (in log space for ``log_scaled``
    parameters); choices are spread evenly in the order first seen. ``shown`` is the original value.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = list(dict.fromkeys(k for t in complete for k in t.params))
    rows = []
    for name in names:
        values = [t.params.get(name) for t in complete]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
        if numeric:
            scaled = [math.log10(v) if name in log_scaled and v and v > 0 else v for v in values]
            present = [v for v in scaled if v is not None]
            lo, hi = min(present), max(present)
            place = [None if v is None else (0.5 if hi == lo else (v - lo) / (hi - lo)) for v in scaled]
        else:
            order = list(dict.fromkeys(repr(v) for v in values))
            place = [order.index(repr(v)) / max(1, len(order) - 1) for v in values]
        for t, v, p in zip(complete, values, place):
            rows.append({"trial": t.number, "value": t.value, "param": name, "position": p,
                         "shown": f"{v:.4g}" if isinstance(v, float) else str(v)})
    return rows


def intermediate(study: Any) -> list[dict[str, Any]]:
    """Every value each trial reported at its validations: ``{"trial", "step", "value", "state"}``."""
    return [{"trial": t.number, "step": step, "value": value, "state": t.state.name.lower()}
            for t in study.get_trials(deepcopy=False) for step, value in sorted(t.intermediate_values.items())]


def view(study: Any) -> dict[str, Any]:
    """Everything the Sweep page and notebook show of a study, as plain data."""
    c = counts(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    return {"name": study.study_name, "metric": study.user_attrs.get("metric", "value"),
            "direction": study.direction.name.lower(), "target": study.user_attrs.get("trials"), "counts": c,
            "best": None if best is None else {"trial": best.number, "value": best.value, "params": dict(best.params),
                                               "run": best.user_attrs.get("run")},
            "trials": trials_table(study), "history": history(study), "importances": importances(study),
            "parallel": parallel(study, log_scaled(study)), "intermediate": intermediate(study)}
