"""lab.dashboard_data and lab.tfevents against runs made by real short trainings."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from lab import dashboard_data as dd
from lab import runs as runs_mod
from lab.errors import LabError
from lab.tfevents import event_files, read_events, read_scalars


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, three_runs) -> Path:
    """Two seed-mlp runs that differ in learning rate, and one tiny gpt-nano (samples, tokens)."""
    return three_runs(tmp_path_factory.mktemp("runs"))


def _runs(root: Path) -> dict[str, runs_mod.Run]:
    found = runs_mod.list_runs(root)
    return {"mlp": [r for r in found if r.experiment == "seed-mlp"], "gpt": [r for r in found if r.experiment == "gpt-nano"]}


def test_runs_table_rows(root: Path) -> None:
    rows = dd.runs_table(root)
    assert len(rows) == 3
    assert [r["run"] for r in rows] == [r.name for r in reversed(runs_mod.list_runs(root))]  # newest first
    by_exp = {r["experiment"]: r for r in rows}
    gpt = by_exp["gpt-nano"]
    assert gpt["status"] == "completed" and gpt["steps"] == 20 and gpt["max steps"] == 20
    assert gpt["model"] == "gpt" and gpt["params"] > 0
    assert gpt["best metric"] == "val/loss" and gpt["best value"] > 0
    assert gpt["throughput unit"] == "tokens/s" and gpt["throughput"] > 0
    assert by_exp["seed-mlp"]["throughput unit"] == "samples/s"


def test_filter_rows(root: Path) -> None:
    rows = dd.runs_table(root)
    assert [r["experiment"] for r in dd.filter_rows(rows, search="GPT")] == ["gpt-nano"]
    assert len(dd.filter_rows(rows, experiments=["seed-mlp"])) == 2
    assert dd.filter_rows(rows, statuses=["failed"]) == []
    assert not dd.any_active(rows)
    assert dd.any_active([{**rows[0], "status": "running"}])


def test_cached_rows_get_the_live_status_of_running_runs(tmp_path: Path, root: Path, other_process) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    run = runs_mod.list_runs(copy)[0]
    child, ident = other_process
    runs_mod.update_summary(run, status="running", process=ident)
    cached = dd.runs_table(copy)  # what the dashboard caches until a file changes
    assert dd.with_live_status(cached, copy) == cached and dd.any_active(cached)
    child.kill()
    child.wait()  # killed: no file changes, so the signature (the cache key) stays the same
    live = dd.with_live_status(cached, copy)
    assert {r["run"]: r["status"] for r in live}[run.name] == "crashed" and not dd.any_active(live)
    assert [r for r in live if r["run"] != run.name] == [r for r in cached if r["run"] != run.name]
    shutil.rmtree(run.path)  # deleted meanwhile: the row stays until the next reload
    assert len(dd.with_live_status(cached, copy)) == len(cached)


def test_signature_changes_only_when_files_change(tmp_path: Path, root: Path) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    sig = dd.runs_signature(copy)
    assert len(sig) == 3 and dd.runs_signature(copy) == sig
    run = runs_mod.list_runs(copy)[0]
    run_sig = dd.run_signature(run)
    time.sleep(0.01)
    runs_mod.update_summary(run, status="running")
    assert dd.runs_signature(copy) != sig
    assert dd.run_signature(run) != run_sig
    assert dd.runs_signature(tmp_path / "missing") == ()


@pytest.mark.parametrize("name", ["../outside", "/etc", "seed-mlp/../../outside", "%2e%2e/outside", "", "  "])
def test_resolve_refuses_names_outside_the_root(root: Path, name: str) -> None:
    with pytest.raises(LabError):
        dd.resolve(name, root)


def test_resolve_many(root: Path) -> None:
    name = runs_mod.list_runs(root)[0].name
    found, errors = dd.resolve_many([name, "../x", "nope/nope"], root)
    assert [r.name for r in found] == [name]
    assert len(errors) == 2 and "outside the runs root" in errors[0]


def test_fast_reader_matches_tensorboard(root: Path, tensorboard_scalars) -> None:
    for run in runs_mod.list_runs(root):
        ours, theirs = read_scalars(run.path), tensorboard_scalars(run.path)
        assert set(ours) == set(theirs) and "train/loss" in ours
        for tag in theirs:  # same steps, same values (approx takes flat sequences only since pytest 9.2)
            assert [s for s, _, _ in ours[tag]] == [s for s, _, _ in theirs[tag]]
            assert [v for _, _, v in ours[tag]] == pytest.approx([v for _, _, v in theirs[tag]])


def test_fast_reader_survives_a_truncated_file(tmp_path: Path, root: Path) -> None:
    run = _runs(root)["mlp"][0]
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    biggest = max(event_files(copy), key=lambda p: p.stat().st_size)
    full = len(read_scalars(copy)["train/loss"])
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) - 7])  # cut the last record in half
    cut = read_scalars(copy)
    assert 0 < len(cut.get("train/loss", [])) <= full


def test_samples_are_read_from_text_summaries(root: Path) -> None:
    runs = _runs(root)
    assert read_events(runs["gpt"][0].path).texts
    samples = dd.samples(runs["gpt"][0])
    assert samples and samples[0]["step"] >= samples[-1]["step"] and samples[0]["text"]
    assert dd.samples(runs["mlp"][0]) == []


def test_smooth() -> None:
    assert dd.smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert dd.smooth([5.0] * 4, 0.9) == pytest.approx([5.0] * 4)  # debiased: no ramp from 0
    assert dd.smooth([0.0, 1.0], 0.5) == pytest.approx([0.0, 0.5 / 0.75])
    out = dd.smooth([1.0, float("nan"), 1.0], 0.5)
    assert out[0] == 1.0 and out[1] != out[1] and out[2] == pytest.approx(1.0)
    with pytest.raises(LabError):
        dd.smooth([1.0], 1.0)


def test_curves_x_axes(root: Path) -> None:
    runs = _runs(root)
    gpt, mlp = runs["gpt"][0], runs["mlp"][0]
    per_step, unit = dd.tokens_per_step(gpt)
    assert unit == "tokens" and per_step == 12 * 64  # global batch x block size
    assert dd.tokens_per_step(mlp) == (32, "samples")
    df = dd.curves([gpt, mlp], ["train/loss", "val/loss"], x="tokens", smoothing=0.5)
    assert set(df["run"]) == {gpt.name, mlp.name} and set(df["tag"]) == {"train/loss", "val/loss"}
    g = df[(df["run"] == gpt.name) & (df["tag"] == "train/loss")]
    assert (g["x"] == g["step"] * per_step).all()
    wall = dd.curves([gpt], ["train/loss"], x="wall time")
    assert wall["x"].min() >= 0 and wall["x"].is_monotonic_increasing
    assert dd.curves([gpt], ["no/such"]).empty
    # A curve of one point (the test metric, logged once) is flagged for the chart to draw as a dot.
    both = dd.curves([gpt], ["train/loss", "test/loss"])
    sizes = both.groupby("tag").size()
    assert sizes["test/loss"] == 1 and sizes["train/loss"] > 1
    assert both.groupby("tag")["lone"].all().to_dict() == {"test/loss": True, "train/loss": False}
    with pytest.raises(LabError):
        dd.curves([gpt], ["train/loss"], x="epochs")


def test_config_diff_shows_only_differing_fields(root: Path) -> None:
    a, b = _runs(root)["mlp"]
    diff = dd.config_diff([a, b])
    assert [row["field"] for row in diff] == ["optimizer.lr"]
    assert {diff[0][a.name], diff[0][b.name]} == {0.05, 0.02}
    full = dd.config_table([a, b], only_diff=False)
    assert len(full) > 10 and sum(r["differs"] for r in full) == 1
    hidden = next(r for r in full if r["field"] == "model.hidden")
    assert hidden[a.name] == "[20]"  # lists as text: one type per column


def test_final_metrics_and_hparams(root: Path) -> None:
    a, b = _runs(root)["mlp"]
    rows = {r["metric"]: r for r in dd.final_metrics([a, b])}
    assert rows["best val/loss"][a.name] == a.summary["best"]["val/loss"]
    assert rows["test/mse"][b.name] == b.summary["test"]["test/mse"]
    assert rows["params"][a.name] == 241
    points = dd.hparam_points([a, b], "best val/loss")
    assert {p["optimizer.lr"] for p in points} == {0.05, 0.02}
    assert all(p["best val/loss"] is not None for p in points)


def test_run_details_reports_and_artifacts(tmp_path: Path, root: Path) -> None:
    from lab.compress import compress
    from lab.evaluate import evaluate

    run = _runs(root)["mlp"][0]
    copy_root = tmp_path / "runs"
    shutil.copytree(run.path, copy_root / run.name)
    run = runs_mod.load_run(copy_root / run.name)
    assert dd.eval_reports(run) == []
    assert dd.compression(run) == {"comparison": None, "pareto_png": None, "methods": {}}
    evaluate(run, max_batches=1, repeats=1, warmup=1, log=False)
    compress(run, "int8-dynamic", max_batches=1, repeats=1)
    reports = dd.eval_reports(run)
    assert [r["label"] for r in reports] == ["best"] and reports[0]["report"]["split"] == "test"
    comp = dd.compression(run)
    assert list(comp["methods"]) == ["int8-dynamic"]
    rows = dd.method_rows(comp["methods"])
    assert rows[0]["method"] == "int8-dynamic" and rows[0]["size_ratio"] > 0
    files = {f["file"]: f["bytes"] for f in dd.artifacts(run)}
    assert files["checkpoints/best.ckpt"] == (run.path / "checkpoints/best.ckpt").stat().st_size
    assert "reports/eval-best.json" in files and "compressed/int8-dynamic/report.json" in files
    assert dd.reproduce_command(run) == f"lab fit --config {run.path / 'config.yaml'}"


# --------------------------------------------------------------------------- issue 18: hardening


def add_running_run(root: Path, steps: int = 37, max_steps: int = 100) -> tuple[str, Any]:
    """A run that says ``running`` with this process's identity (alive while the test runs) and
    event files written by TensorBoard's own writer: train/loss at steps 0..``steps - 1`` (as
    Lightning logs them: step k's loss under the k steps done before it), val/loss 3.0, 2.0, 2.5
    at steps 10, 20, 30. Returns its name and the open writer (to log more)."""
    from torch.utils.tensorboard import SummaryWriter

    from lab import procs
    from lab.fileio import write_json

    run_dir = Path(root) / "live" / "20990101-000000-live"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"experiment": "live", "model": {"name": "mlp"},
                                                         "trainer": {"max_steps": max_steps}}))
    write_json(run_dir / "summary.json", {"status": "running", "process": procs.identity(),
                                          "started_at": runs_mod.now_iso(), "experiment": "live"})
    writer = SummaryWriter(str(run_dir))
    for s in range(steps):
        writer.add_scalar("train/loss", 5.0 / (s + 1), s)
    for s, v in ((10, 3.0), (20, 2.0), (30, 2.5)):
        writer.add_scalar("val/loss", v, s)
    writer.flush()
    return f"live/{run_dir.name}", writer


def test_corrupt_and_linked_out_runs_are_rows_with_their_reason(tmp_path: Path, root: Path, corrupt_runs) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    bad = corrupt_runs(copy, outside=tmp_path / "outside")
    rows = {r["run"]: r for r in dd.runs_table(copy)}
    assert len(rows) == 3 + len(bad)
    for name in bad:
        assert rows[name]["status"] == "unreadable", rows[name]
        assert rows[name]["problem"].startswith(("unreadable:", "refused:")) and "\n" not in rows[name]["problem"]
    assert "refused" in rows["linked/20990101-000000-link"]["problem"]
    assert rows["linked/20990101-000000-link"]["error"] is None  # none of the outside run's data
    assert "YAML" in rows["yaml-tag/20990101-000000-bad0"]["problem"]
    good = [n for n, r in rows.items() if r["problem"] is None]
    assert len(good) == 3 and all(rows[n]["status"] == "completed" for n in good)
    # The corrupt runs are the newest: a page still opens on a readable one.
    names = list(rows)
    assert names[0] in bad
    assert dd.first_readable(names, list(rows.values())) == [good[0]]
    assert dd.first_readable(names, list(rows.values()), [bad[0]]) == [bad[0]]  # named in the URL: shown, refused
    assert dd.problem_of(bad[1], list(rows.values())) == rows[bad[1]]["problem"]
    assert dd.problem_of(good[0], list(rows.values())) is None


def test_counts_stay_integers_beside_missing_values(tmp_path: Path, root: Path, corrupt_runs) -> None:
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    corrupt_runs(copy)
    df = dd.runs_frame(dd.runs_table(copy))
    assert str(df["steps"].dtype) == "Int64" and str(df["params"].dtype) == "Int64"
    assert df["steps"].isna().sum() == 4 and sorted(df["steps"].dropna().astype(str)) == ["20", "30", "30"]


def test_config_and_metric_tables_show_integers_as_integers(tmp_path: Path) -> None:
    a = runs_mod.Run(tmp_path / "e" / "a-0001", config={"trainer": {"max_steps": 8}, "optimizer": {"lr": 0.05}},
                     summary={"step": 8, "best": {"val/loss": 1.25}})
    b = runs_mod.Run(tmp_path / "e" / "b-0002", config={"trainer": {"max_steps": 16}, "optimizer": {"lr": 0.02},
                                                        "model": {"hidden": [20, 10], "bias": True}},
                     summary={"step": 16, "best": {"val/loss": 0.5}})
    table = dd.config_table([a, b])
    naive = pd.DataFrame(table).set_index("field")  # what the page showed before: 8.0
    assert naive.loc["trainer.max_steps", a.name] == 8.0 and naive[a.name].dtype == float
    shown = dd.display_frame(table, "field")
    assert shown.loc["trainer.max_steps", a.name] == "8" and shown.loc["trainer.max_steps", b.name] == "16"
    assert shown.loc["optimizer.lr", a.name] == "0.05"
    assert shown.loc["model.hidden", a.name] == "" and shown.loc["model.hidden", b.name] == "[20, 10]"
    assert shown.loc["model.bias", b.name] == "true" and list(shown["differs"]) == [True] * len(shown)
    metrics = dd.display_frame(dd.final_metrics([a, b]), "metric")
    assert metrics.loc["steps", a.name] == "8" and metrics.loc["best val/loss", b.name] == "0.5"


def test_curves_too_short_to_smooth_are_drawn_raw(tmp_path: Path) -> None:
    name, writer = add_running_run(tmp_path)
    writer.close()
    df = dd.curves([runs_mod.load_run(tmp_path / name)], ["train/loss", "val/loss"], smoothing=0.9)
    val, train = df[df["tag"] == "val/loss"], df[df["tag"] == "train/loss"]
    assert len(val) == 3 < dd.MIN_SMOOTH_POINTS <= len(train)
    assert list(val["smoothed"]) == list(val["value"])  # the real last value, not bent towards the first
    assert list(train["smoothed"]) != list(train["value"])


def test_legend_labels_tell_runs_apart(root: Path) -> None:
    names = ["seed-mlp/20261128-120000-ab12", "seed-mlp/20261128-120000-cd34", "gpt-nano/20261128-120000-ab12"]
    labels = dd.run_labels(names)
    assert len(set(labels.values())) == 3 and all(len(v) < 20 for v in labels.values())
    assert labels[names[0]] == "seed-mlp · ab12"
    same_suffix = ["a/20261128-120000-ab12", "a/20261128-130000-ab12"]
    assert dd.run_labels(same_suffix) == {n: n for n in same_suffix}  # collide: the full names
    a, b = _runs(root)["mlp"]
    df = dd.curves([a, b], ["train/loss"])
    assert df.groupby("run")["label"].first().to_dict() == dd.run_labels([a.name, b.name])
    assert df["label"].nunique() == 2


def test_a_running_run_shows_live_steps_and_best(tmp_path: Path) -> None:
    name, writer = add_running_run(tmp_path)
    try:
        cached = dd.runs_table(tmp_path)
        assert cached[0]["steps"] is None and cached[0]["best value"] is None  # summary.json: only at the end
        [row] = dd.with_live_status(cached, tmp_path)
        assert row["status"] == "running" and row["steps"] == 37 and row["max steps"] == 100
        assert row["best metric"] == "val/loss" and row["best value"] == 2.0
        for s in range(37, 50):
            writer.add_scalar("train/loss", 0.1, s)
        writer.add_scalar("val/loss", 1.5, 49)
        writer.flush()
        assert dd.live_progress(tmp_path / name) == {"steps": 50, "best metric": "val/loss", "best value": 1.5}
    finally:
        writer.close()
    assert dd.live_progress(tmp_path / "no-such-run") == {"steps": None, "best metric": None, "best value": None}


def test_a_failed_jobs_message_is_whole() -> None:
    from lab.jobs import error_from_log

    log = ("$ lab evaluate x\nerror: checkpoint runs/x/checkpoints/best.ckpt was refused: it holds objects other\n"
           "  than tensors (the global posix.system); never load checkpoints you do not trust\n")
    assert error_from_log(log, 2).endswith("(the global posix.system); never load checkpoints you do not trust")
    tb = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    f()\n"
          "RuntimeError: the first line\nand the rest of the reason\n")
    assert error_from_log(tb, 1) == "exit code 1: RuntimeError: the first line and the rest of the reason"


class _Payload:
    def __reduce__(self):  # unpickling it would run a shell command
        return (os.system, ("echo pwned",))


def test_a_checkpoint_refusal_names_the_global(tmp_path: Path) -> None:
    import torch

    from lab.checkpoints import CheckpointError, load_checkpoint

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert f"(the global {os.system.__module__}.system)" in str(e.value)
    assert "\n" not in str(e.value)
