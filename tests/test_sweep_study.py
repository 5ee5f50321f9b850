"""A sweep's study as rows and charts (what the Sweep page and notebook 04 show), from a real tiny sweep."""

from __future__ import annotations

import io

from pathlib import Path

import optuna
import pytest

from lab import runs, sweep_charts
from lab import sweep_study as ss
from lab.errors import LabError
from lab.sweep import sweep

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"trainer.max_steps": 10, "trainer.val_check_interval": 5, "trainer.limit_val_batches": 2,
        "model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32,
        "optimizer.warmup_steps": 2, "trainer.checkpoint_every_n_steps": None}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory):
    """Four trials: two good learning rates (one per schedule), then a hopeless one the median pruner stops."""
    root = tmp_path_factory.mktemp("runs")
    space = {"optimizer.lr": {"low": 1e-7, "high": 3e-2, "log": True}, "optimizer.schedule": ["cosine", "constant"]}
    result = sweep("gpt-nano", space, trials=4, overrides=TINY, runs_root=root, name="lr", echo=None,
                   pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
                   enqueue=[{"optimizer.lr": 2e-2, "optimizer.schedule": "constant"},
                            {"optimizer.lr": 5e-3, "optimizer.schedule": "cosine"},
                            {"optimizer.lr": 1e-7, "optimizer.schedule": "cosine"}])
    return root, result


def test_rows_of_a_study(swept) -> None:
    root, result = swept
    [row] = ss.list_sweeps(root)
    assert row["sweep"] == "gpt-nano/lr" and row["metric"] == "val/loss" and row["direction"] == "minimize"
    assert row["finished"] == 4 and row["pruned"] >= 1 and row["target"] == 4 and row["best"] == result.best["value"]
    study = ss.open_study(Path(row["path"]))
    table = ss.trials_table(study)
    assert [r["trial"] for r in table] == [0, 1, 2, 3]
    assert table[2]["state"] == "pruned" and table[2]["steps"] == 5 and table[2]["value"] > table[0]["value"]
    assert {"optimizer.lr", "optimizer.schedule", "run"} <= set(table[0])
    assert all(runs.resolve_run(r["run"], root).summary["trial"] == r["trial"] for r in table)
    history = ss.history(study)
    bests = [h["best"] for h in history]
    assert bests == sorted(bests, reverse=True) and bests[-1] == result.best["value"]  # best so far only improves
    positions = ss.parallel(study, ss.log_scaled(study))
    assert ss.log_scaled(study) == ("optimizer.lr",)
    assert {p["param"] for p in positions} == {"optimizer.lr", "optimizer.schedule"}
    assert all(0.0 <= p["position"] <= 1.0 for p in positions)
    steps = {(r["trial"], r["step"]) for r in ss.intermediate(study)}
    assert (2, 5) in steps and (2, 10) not in steps and (0, 10) in steps  # the pruned trial stopped at 5
    importances = ss.importances(study)
    assert set(importances) <= {"optimizer.lr", "optimizer.schedule"} and importances
    assert sum(importances.values()) == pytest.approx(1.0)


def test_charts_of_a_study(swept) -> None:
    _, result = swept
    view = ss.view(result.study)
    made = sweep_charts.charts(view)
    assert set(made) == {"history", "importances", "parallel", "intermediate"}
    for chart in made.values():
        spec = chart.to_dict()  # a valid Vega-Lite spec (Altair validates it)
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    assert sweep_charts.charts(result.study).keys() == made.keys()
    # each parameter axis of the parallel chart has room for its name (they overprinted at 20 px)
    from PIL import Image

    names = {row["param"] for row in view["parallel"]}
    width = Image.open(io.BytesIO(sweep_charts.png(made["parallel"], scale=1))).width
    assert width >= len(names) * 7 * max(map(len, names)), (width, names)
    assert sweep_charts.history_chart([], "val/loss") is None and sweep_charts.importance_chart({}) is None


def test_a_study_that_cannot_be_read_is_one_row(swept, tmp_path: Path) -> None:
    folder = runs.sweep_dir(tmp_path, "gpt-nano", "broken")
    folder.mkdir(parents=True)
    (folder / ss.STUDY_FILE).write_bytes(b"not a database" * 100)
    [row] = ss.list_sweeps(tmp_path)
    assert row["sweep"] == "gpt-nano/broken" and "study" in row["problem"] and "\n" not in row["problem"]
    with pytest.raises(LabError):
        ss.open_study(tmp_path / "nowhere")


def test_a_storage_whose_schema_another_process_is_writing_opens_on_the_next_try(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A sweep starting while the dashboard opens the same new study.db: both write the schema's
    # version row and one gets a UNIQUE constraint error. The schema is complete then: try again.
    import sqlalchemy.exc

    real, calls = optuna.storages.RDBStorage, []

    class Racing(real):  # type: ignore[misc,valid-type]
        def __init__(self, url: str, **kw: object) -> None:
            calls.append(url)
            if len(calls) == 1:
                real(url, **kw)  # "the other process" writes the schema...
                raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE"))
            super().__init__(url, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    url = ss.sqlite_url(tmp_path)
    store = ss.storage(url)
    assert len(calls) == 2 and optuna.create_study(storage=store, study_name="s").study_name == "s"
    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda url, **kw: (_ for _ in ()).throw(
        sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("UNIQUE"))))
    monkeypatch.setattr(ss.time, "sleep", lambda s: None)
    with pytest.raises(LabError, match="cannot open the study storage"):
        ss.storage(url)


def test_a_chart_is_drawn_to_png_without_a_browser(tmp_path: Path) -> None:
    import altair as alt
    import pandas as pd

    chart = alt.Chart(pd.DataFrame({"trial": [0, 1, 2], "value": [3.0, 2.5, 2.7]})).mark_circle().encode(
        x="trial:Q", y="value:Q")
    small, large = sweep_charts.png(chart, scale=1), sweep_charts.png(chart, scale=2)
    assert small[:8] == b"\x89PNG\r\n\x1a\n" and len(large) > len(small)
