"""The notebook widgets without a browser: state <-> config, refusals, estimates, live training, Stop, comparer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab import runs
from lab.callbacks import Throughput
from lab.config import list_presets, load_config
from lab.errors import ConfigError
from lab.widgets import HyperparameterPanel, RunComparer, workshop
from lab.widgets.compare import common_tags, config_diff, diff_html, overlay_png
from lab.widgets.live import LiveFeed, chart_png, series
from lab.widgets.mapping import FIELDS, assess, config_from_state, overrides_from_state, state_from_config

TINY = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32, "optimizer.warmup_steps": 2,
        "trainer.val_check_interval": 5, "trainer.limit_val_batches": 2, "trainer.log_every_n_steps": 2}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# ---------------------------------------------------------------- mapping (no widgets)

@pytest.mark.parametrize("preset", list_presets())
def test_state_round_trips_to_the_same_config(preset: str) -> None:
    state = state_from_config(preset)
    assert state["preset"] == preset
    assert config_from_state(state).to_dict() == load_config(preset).to_dict()


def test_state_names_every_field_and_none_for_fields_the_model_lacks() -> None:
    state = state_from_config("seed-mlp")
    assert set(state) == {"preset", *FIELDS}
    assert state["n_head"] is None and state["block_size"] is None and state["lr"] == 0.05
    assert all(key.split(".")[-1] not in ("n_head", "block_size") for key in overrides_from_state(state))


def test_widget_values_land_in_the_config_fields() -> None:
    state = {**state_from_config("gpt-nano"), "n_layer": 2, "lr": 3e-4, "batch_size": 7, "warmup_steps": 0,
             "precision": "bf16-mixed", "max_steps": 11, "dropout": 0.1}
    cfg = config_from_state(state)
    assert (cfg.model.n_layer, cfg.optimizer.lr, cfg.data.batch_size) == (2, 3e-4, 7)
    assert (cfg.optimizer.warmup_steps, cfg.trainer.precision, cfg.trainer.max_steps, cfg.model.dropout) == (
        0, "bf16-mixed", 11, 0.1)
    assert state_from_config(cfg, "gpt-nano") == state


def test_widgets_override_the_base_overrides() -> None:
    state = {**state_from_config("gpt-nano"), "n_layer": 3}
    cfg = config_from_state(state, base={"model.n_layer": 1, "trainer.val_check_interval": 7})
    assert cfg.model.n_layer == 3 and cfg.trainer.val_check_interval == 7


def test_invalid_head_count_is_refused_with_the_config_error() -> None:
    a = assess({**state_from_config("gpt-nano"), "n_head": 3})
    assert not a.ok and a.config is None
    assert "model.n_embd" in a.reason and "n_head=3" in a.reason
    with pytest.raises(ConfigError):
        config_from_state({**state_from_config("gpt-nano"), "n_head": 3})


def test_estimates_grow_with_depth() -> None:
    a1 = assess({**state_from_config("gpt-nano"), "n_layer": 1})
    a4 = assess(state_from_config("gpt-nano"))
    assert a1.params < a4.params and a1.flops_per_unit < a4.flops_per_unit
    assert a4.unit == "tokens" and a4.memory_bytes and a4.memory_bytes > 0 and a4.fits


@pytest.mark.parametrize("preset", ["gpt-nano", "digits-cnn", "digits-vit", "seed-mlp"])
def test_panel_parameter_count_is_the_built_models(preset: str) -> None:
    # What fit builds: the DataModule (a char GPT takes its vocabulary from the prepared corpus), then the module.
    from lab.train import build_datamodule, build_module

    cfg = load_config(preset)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    built = sum(p.numel() for p in build_module(cfg, dm).model.parameters())
    panel = HyperparameterPanel(preset)
    assert panel.assessment.ok and panel.assessment.params == built
    assert f"{built:,}" in panel.readout.value


def test_a_model_that_does_not_fit_disables_training() -> None:
    big = {**state_from_config("gpt-nano"), "n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024,
           "batch_size": 256}
    a = assess(big, device="L4")
    assert a.config is not None and a.fits is False and not a.ok
    assert "GiB" in a.reason and "L4" in a.reason


def test_multi_device_needs_ddp_notebook_in_a_kernel() -> None:
    state = {**state_from_config("seed-mlp"), "devices": 2}
    refused = assess(state)
    assert not refused.ok and "ddp_notebook" in refused.reason
    assert assess({**state, "strategy": "ddp_notebook"}, device="cpu").config.trainer.devices == 2
    # From a terminal (lab fit), ddp starts its own processes: no refusal, the plan for 2 devices.
    terminal = assess(state, in_notebook=False, device="cpu")
    assert terminal.ok and terminal.reason == "" and terminal.config.trainer.devices == 2


def test_small_mode_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("1", True), ("yes", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv(workshop.ENV, value)
        assert workshop.small_mode() is expected
    assert workshop.tiny("gpt-nano", small=False) == {}
    small = load_config("gpt-nano", workshop.tiny("gpt-nano", small=True))
    assert small.model.n_layer == 1 and small.trainer.max_steps <= 40
    for preset in list_presets():
        if preset != "gpt2-124m":
            load_config(preset, workshop.tiny(preset, small=True))  # every small setting is a valid config


# ---------------------------------------------------------------- the panel

def test_panel_flags_invalid_values_and_disables_train() -> None:
    panel = HyperparameterPanel("gpt-nano")
    assert panel.assessment.ok and not panel.train_button.disabled and panel.stop_button.disabled
    assert "parameters" in panel.readout.value
    a = panel.set(n_head=3)
    assert not a.ok and panel.train_button.disabled
    assert panel.train_button.tooltip == a.reason and "model.n_embd" in panel.readout.value
    assert panel.train() is None  # a refused config never starts a run
    panel.set(n_head=4)
    assert not panel.train_button.disabled


def _shown(panel: HyperparameterPanel, name: str) -> bool:
    return panel.controls[name].layout.display != "none"


def test_panel_preset_switch_hides_fields_the_model_lacks() -> None:
    panel = HyperparameterPanel("gpt-nano", base=lambda p: workshop.tiny(p, small=True))
    assert panel.controls["n_layer"].value == 1 and panel.controls["max_steps"].value == 30
    assert not _shown(panel, "hidden") and panel.state["hidden"] is None
    panel.controls["preset"].value = "seed-mlp"
    assert panel.controls["n_head"].disabled and panel.state["n_head"] is None
    assert not any(_shown(panel, n) for n in ("n_layer", "n_head", "n_embd", "block_size", "dropout"))
    assert _shown(panel, "lr") and _shown(panel, "hidden") and panel.controls["hidden"].value == "20"
    assert panel.controls["lr"].value == 0.05 and panel.assessment.ok
    assert panel.assessment.config.model.name == "mlp"
    panel.controls["preset"].value = "gpt-nano"
    assert not panel.controls["n_head"].disabled and panel.state["n_head"] == 2 and _shown(panel, "n_head")
    panel.load_preset("digits-cnn")  # from code: the dropdown follows
    assert panel.controls["preset"].value == "digits-cnn" and panel.assessment.config.model.name == "cnn"
    assert panel.controls["block_size"].disabled and not _shown(panel, "block_size")
    assert not panel.controls["dropout"].disabled and _shown(panel, "dropout")


def test_panel_lora_controls_show_what_trains_and_what_it_costs() -> None:
    # What fit builds for the panel's config (the vocabulary from the prepared corpus, then the module).
    from lab.finetune import trainable_summary
    from lab.train import build_datamodule, build_module

    panel = HyperparameterPanel("gpt-nano")
    lora_widgets = ("finetune", "lora_rank", "lora_alpha", "lora_targets")
    assert all(_shown(panel, n) for n in lora_widgets) and panel.controls["finetune"].value == "full"
    full = panel.assessment
    assert full.trainable == full.params and "trainable" not in panel.readout.value
    lora = panel.set(finetune="lora", lora_rank=16, lora_targets="both")
    assert lora.config.finetune.rank == 16 and lora.config.finetune.targets == "both"
    cfg = lora.config
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    trainable, total = trainable_summary(build_module(cfg, dm).model)
    assert (lora.trainable, lora.params) == (trainable, total) and trainable < total
    assert f"<b>trainable</b> {trainable:,} ({trainable / total:.2%})" in panel.readout.value
    assert lora.memory_bytes < full.memory_bytes  # no gradients or optimizer states for the frozen base
    assert panel.set(lora_rank=4).trainable == trainable // 4
    # A family that names no LoRA targets has no such controls, and its config keeps full fine-tuning.
    panel.load_preset("digits-cnn")
    assert not any(_shown(panel, n) for n in lora_widgets)
    assert all(panel.state[n] is None for n in lora_widgets) and panel.assessment.config.finetune.method == "full"


def test_mlp_hidden_layers_field_sets_the_model() -> None:
    from lab.models.mlp import MLP

    panel = HyperparameterPanel("seed-mlp")
    a = panel.set(hidden="32, 16")
    assert a.ok and a.config.model.hidden == (32, 16)
    assert a.params == sum(p.numel() for p in MLP(a.config.model).parameters())
    assert not panel.set(hidden="").ok and "model.hidden" in panel.assessment.reason  # lab.config's own refusal
    bad = panel.set(hidden="32, lots")
    assert not bad.ok and "hidden layers" in bad.reason and panel.train_button.disabled
    cnn = HyperparameterPanel("digits-cnn")  # the CNN has one hidden layer: a single width
    assert cnn.controls["hidden"].value == "64" and cnn.set(hidden="96").config.model.hidden == 96
    assert not cnn.set(hidden="96, 32").ok


def test_learning_rate_readout_keeps_its_digits() -> None:
    panel = HyperparameterPanel("gpt-nano")
    panel.set(lr=0.001995)
    fmt = panel.controls["lr"].readout_format  # d3-format: the Python spelling of these specifiers is the same
    assert format(0.001995, fmt) != format(0.002, fmt)
    assert "0.001995" in panel.readout.value


def test_panel_state_maps_back_to_its_config() -> None:
    panel = HyperparameterPanel("gpt-nano")
    panel.set(n_layer=2, lr=5e-3, batch_size=8)
    cfg = panel.assessment.config
    assert (cfg.model.n_layer, cfg.optimizer.lr, cfg.data.batch_size) == (2, pytest.approx(5e-3), 8)
    assert state_from_config(cfg, "gpt-nano") == {**panel.state, "lr": cfg.optimizer.lr}


@pytest.mark.slow
def test_train_button_trains_into_the_runs_folder_with_a_live_chart(tmp_path: Path) -> None:
    panel = HyperparameterPanel("gpt-nano", base=TINY, runs_root=tmp_path, min_redraw_s=0.0)
    panel.set(max_steps=12)
    assert panel.chart.layout.display == "none", "no picture yet: hidden, not a broken-image icon"
    panel.train_button.click()
    run = panel.wait(timeout=300)
    assert panel.job.error is None and run is not None
    assert run.path.parent.parent == tmp_path and runs.load_run(run.path).status == "completed"
    steps, losses = series(panel.feed.history, "loss")
    assert steps[-1] == 12 and len(losses) == 12
    assert series(panel.feed.history, "val_loss")[1], "validation points reach the chart"
    assert panel.chart.value[:8] == b"\x89PNG\r\n\x1a\n" and panel.chart.layout.display != "none"
    assert "completed" in panel.status.value and not panel.train_button.disabled and panel.stop_button.disabled


@pytest.mark.slow
def test_stop_button_ends_the_run_cleanly(tmp_path: Path) -> None:
    panel = HyperparameterPanel("gpt-nano", base=TINY, runs_root=tmp_path)
    panel.set(max_steps=100000)
    job = panel.train()
    assert job is not None and panel.train_button.disabled
    deadline = time.monotonic() + 300  # a guard against hanging, not a timing assertion
    while len(panel.feed.history) < 3 and job.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not panel.stop_button.disabled
    panel.stop_button.click()
    run = panel.wait(timeout=300)
    assert not job.running and job.interrupted and job.error is None
    summary = runs.load_run(run.path).summary
    assert summary["status"] == "interrupted" and summary["step"] < 100000
    assert run.checkpoint("last").exists()
    assert "interrupted" in panel.status.value


def test_live_feed_collects_points_and_draws() -> None:
    seen: list[dict] = []
    feed = LiveFeed(listener=seen.append)

    throughput = Throughput()
    throughput.unit, throughput.latest = "tokens", {"perf/tokens_per_sec": 100.0, "perf/flops_per_sec": 1e9}

    class _Trainer:
        global_step, sanity_checking = 3, False
        callbacks = [object(), throughput]
        callback_metrics = {"val/loss": 2.0}

    import torch

    feed.on_train_batch_end(_Trainer(), None, {"loss": torch.tensor(2.5)}, None, 0)
    feed.on_validation_end(_Trainer(), None)
    assert seen == [{"step": 3.0, "loss": 2.5, "throughput": 100.0}, {"step": 3.0, "val_loss": 2.0}]
    assert feed.unit == "tokens"
    assert chart_png(feed.history, feed.unit)[:4] == b"\x89PNG"


# ---------------------------------------------------------------- comparing runs

def _fake_run(root: Path, lr: float, losses: list[float]) -> runs.Run:
    from torch.utils.tensorboard import SummaryWriter

    cfg = load_config("seed-mlp", {"optimizer.lr": lr}).to_dict()
    run = runs.create_run(root, "seed-mlp", cfg)
    with SummaryWriter(str(run.path)) as w:
        for step, value in enumerate(losses):
            w.add_scalar("train/loss", value, step)
    runs.update_summary(run, status="completed")
    return run


def test_config_diff_and_overlay(tmp_path: Path) -> None:
    a, b = _fake_run(tmp_path, 0.05, [3.0, 2.0, 1.0]), _fake_run(tmp_path, 0.01, [3.0, 2.5, 2.0])
    diff = config_diff([a, b])
    assert diff == {"optimizer.lr": [0.05, 0.01]}
    assert config_diff([a, a]) == {}
    assert common_tags([a, b]) == ["train/loss"]
    assert overlay_png([a, b])[:4] == b"\x89PNG"
    page = diff_html({"x": ["<script>", 1]}, ["r1", "r2"])
    assert "&lt;script&gt;" in page and "<script>" not in page


def test_the_comparer_and_the_dashboard_agree_on_what_differs(tmp_path: Path) -> None:
    from lab import dashboard_data as dd

    a = runs.Run(tmp_path / "e" / "a-1", config={"optimizer": {"lr": 1, "name": "adamw"}, "model": {"hidden": [8]}})
    b = runs.Run(tmp_path / "e" / "b-2", config={"optimizer": {"lr": 1.0, "name": "sgd"}, "data": {"seed": 3}})
    diff = config_diff([a, b])
    assert diff == {"data.seed": [None, 3], "model.hidden": [[8], None], "optimizer.name": ["adamw", "sgd"]}
    assert [row["field"] for row in dd.config_diff([a, b])] == list(diff)  # 1 and 1.0 differ in neither


def test_comparer_widget_lists_and_compares_runs(tmp_path: Path) -> None:
    a, b = _fake_run(tmp_path, 0.05, [3.0, 2.0, 1.0]), _fake_run(tmp_path, 0.01, [3.0, 2.5, 2.0])
    c = RunComparer(tmp_path)
    assert set(c.picker.options) == {a.name, b.name}
    assert c.chart.layout.display == "none", "nothing chosen: no broken-image icon"
    c.select([a.name, b.name])
    assert "optimizer.lr" in c.table.value and c.chart.value[:4] == b"\x89PNG"
    assert c.chart.layout.display != "none"
    c.select([])
    assert c.chart.layout.display == "none"
    assert c.tag.value == "train/loss"


def test_panel_widens_sliders_to_hold_any_value() -> None:
    panel = HyperparameterPanel("gpt-nano", base={"optimizer.lr": 3e-7, "data.batch_size": 1000})
    assert panel.controls["lr"].value == pytest.approx(3e-7) and panel.controls["batch_size"].value == 1000
    assert panel.assessment.config.optimizer.lr == pytest.approx(3e-7)


# ---------------------------------------------------------------- one job per runs root; runs trained elsewhere

def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds  # a guard against hanging, not a timing assertion
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.fixture
def fake_fit(monkeypatch: pytest.MonkeyPatch):
    """``lab.train.fit`` replaced by a run that trains until stopped (or ``steps`` are written):
    it makes the run folder as fit does and writes its curves to event files only, never to the
    callbacks, as training in ddp_notebook's forked workers does."""
    from torch.utils.tensorboard import SummaryWriter

    from lab import procs
    from lab.errors import RunInterrupted

    def fit(config, runs_root=None, callbacks=(), progress=True, stop=None, **_):
        run = runs.create_run(runs_root, config.experiment, config.to_dict())
        runs.update_summary(run, status="running", process=procs.identity())
        with SummaryWriter(str(run.path)) as w:
            for step in range(config.trainer.max_steps):
                if stop is not None and stop.is_set():
                    runs.update_summary(run, status="interrupted")
                    raise RunInterrupted(2, run.path)
                w.add_scalar("train/loss", 3.0 - 0.01 * step, step)
                if step % 5 == 4:
                    w.add_scalar("val/loss", 3.1 - 0.01 * step, step)
                w.flush()
                time.sleep(0.02)
        runs.update_summary(run, status="completed")
        return runs.load_run(run.path)

    monkeypatch.setattr("lab.train.fit", fit)
    return fit


def test_one_job_per_runs_root_and_a_new_panel_controls_it(tmp_path: Path, fake_fit) -> None:
    from lab.errors import LabError
    from lab.widgets.mapping import TrainJob, active_job

    waiting = HyperparameterPanel("seed-mlp", runs_root=tmp_path)  # made before the run starts
    first = HyperparameterPanel("seed-mlp", runs_root=tmp_path)
    first.set(max_steps=100_000)
    job = first.train()
    assert job is not None and active_job(tmp_path) is job
    again = HyperparameterPanel("seed-mlp", runs_root=tmp_path)  # the cell re-run while it trains
    for panel in (waiting, again):
        assert panel.job is job and panel.train_button.disabled and not panel.stop_button.disabled
        assert "already training" in panel.status.value
        assert panel.train() is None  # no second run in parallel
    with pytest.raises(LabError, match="already training"):
        TrainJob(first.assessment.config, tmp_path).start()
    assert _wait_for(lambda: job.run_path is not None)
    again.stop_button.click()  # the new panel's Stop stops the old panel's run
    job.wait(timeout=30)
    assert not job.running and job.interrupted and active_job(tmp_path) is None
    assert [r.status for r in runs.list_runs(tmp_path)] == ["interrupted"]
    for panel in (first, waiting, again):
        assert _wait_for(lambda: not panel.train_button.disabled) and panel.stop_button.disabled
        assert "interrupted" in panel.status.value
    other = HyperparameterPanel("seed-mlp", runs_root=tmp_path / "elsewhere")
    assert other.job is None and not other.train_button.disabled  # another runs root is not blocked


def test_panel_chart_follows_a_run_trained_in_other_processes(tmp_path: Path, fake_fit) -> None:
    panel = HyperparameterPanel("seed-mlp", runs_root=tmp_path, poll_s=0.05, min_redraw_s=0.0)
    panel.chart.value = chart_png([{"step": 0.0, "loss": 9.0}])  # the previous run's chart
    previous = panel.chart.value
    panel.set(max_steps=40)
    job = panel.train()
    assert panel.chart.value != previous  # cleared at the start: the old curve never passes for the new run
    assert _wait_for(lambda: len(series(panel.feed.history, "loss")[0]) >= 5)  # live, from the event files
    drawn = panel.chart.value
    run = panel.wait(timeout=60)
    assert job.error is None and not panel.feed.in_process
    curves = runs.scalars(run)
    assert series(panel.feed.history, "loss")[1] == [v for _, _, v in curves["train/loss"]]
    assert series(panel.feed.history, "val_loss")[1] == [v for _, _, v in curves["val/loss"]]
    assert panel.chart.value[:4] == b"\x89PNG" and panel.chart.value != drawn  # the complete curves at the end
    assert "completed" in panel.status.value


def test_live_feed_in_a_forked_worker_stays_silent() -> None:
    seen: list[dict] = []
    feed = LiveFeed(listener=seen.append)
    feed._pid = -1  # as in a ddp_notebook worker: another process than the kernel that made it
    feed._emit({"step": 1.0, "loss": 2.0})
    assert seen == [] and feed.history == [] and not feed.in_process


def test_points_from_event_files_match_the_runs_curves(tmp_path: Path) -> None:
    from lab.widgets.live import points_from_scalars

    run = _fake_run(tmp_path, 0.05, [3.0, 2.0, 1.0])
    feed = LiveFeed()
    assert feed.read_events(run.path) and not feed.read_events(run.path)  # unchanged the second time
    assert series(feed.history, "loss") == ([0.0, 1.0, 2.0], [3.0, 2.0, 1.0])
    assert points_from_scalars({"perf/tokens_per_sec": [(4, 0.0, 10.0)]}) == ([{"step": 4.0, "throughput": 10.0}],
                                                                               "tokens")
    feed._emit({"step": 0.0, "loss": 5.0})  # training turns out to run here after all: the callback wins
    assert feed.history == [{"step": 0.0, "loss": 5.0}] and not feed.read_events(run.path)


def test_comparer_lists_the_newest_runs_first_and_filters(tmp_path: Path) -> None:
    names = []
    for i in range(25):
        experiment = "digits-vit" if i % 5 == 0 else "seed-mlp"
        run = runs.create_run(tmp_path, experiment, load_config(experiment).to_dict())
        runs.update_summary(run, status="completed")
        names.append(run.name)
    # Run ids start with the UTC time: newest first is descending run id.
    newest_first = sorted(names, key=lambda n: n.split("/")[1], reverse=True)
    c = RunComparer(tmp_path, limit=20)
    assert list(c.picker.options) == newest_first[:20] and "of 25" in c.shown.value
    c.select([newest_first[-1]])  # older than the list shows: still selectable by name
    assert c.picker.value == (newest_first[-1],)
    c.filter.value = "vit"
    vits = [n for n in newest_first if n.startswith("digits-vit")]
    kept = [] if newest_first[-1] in vits else [newest_first[-1]]
    assert list(c.picker.options) == [*kept, *vits] and "5 runs" in c.shown.value
    assert c.picker.value == (newest_first[-1],)  # a selection survives filtering


@pytest.mark.slow
def test_a_kernel_shutting_down_stops_its_run_with_a_checkpoint(tmp_path: Path) -> None:
    # Jupyter's restart asks the kernel to exit before it kills it: the atexit hook stops the run
    # at a step boundary, so it is resumable even before its first periodic checkpoint.
    from lab.widgets.mapping import _stop_at_exit

    panel = HyperparameterPanel("gpt-nano", base={**TINY, "trainer.checkpoint_every_n_steps": None},
                                runs_root=tmp_path)
    panel.set(max_steps=100_000)
    job = panel.train()
    assert job is not None and _wait_for(lambda: len(panel.feed.history) >= 3 or not job.running, 300)
    _stop_at_exit(timeout=300)
    assert not job.running and job.interrupted and job.error is None
    run = runs.load_run(job.run_path)
    assert run.status == "interrupted" and run.checkpoint("last").exists()
    assert f"lab fit --resume {run.name}" in runs.status_note(run)


def test_panel_tooltips_are_the_config_fields_docstrings() -> None:
    from lab.config_docs import field_docs
    from lab.models import MLPConfig, ViTConfig

    panel = HyperparameterPanel("digits-vit")
    assert panel.controls["n_layer"].tooltip == field_docs(ViTConfig)["n_layer"]
    assert panel.controls["lr"].tooltip.startswith("Peak learning rate")
    panel.load_preset("seed-mlp")
    assert panel.controls["hidden"].tooltip == field_docs(MLPConfig)["hidden"]


_DDP_STOP_SCRIPT = """
import json, sys, time
import torch
torch.set_num_threads(1)
from lab import runs
from lab.checkpoints import load_checkpoint
from lab.config import load_config
from lab.widgets.mapping import TrainJob

cfg = load_config("seed-mlp", {"trainer.max_steps": 100000, "trainer.strategy": "ddp_notebook",
                               "trainer.devices": 2, "trainer.accelerator": "cpu", "data.batch_size": 16,
                               "trainer.val_check_interval": 20, "trainer.limit_val_batches": 2,
                               "trainer.log_every_n_steps": 5})
job = TrainJob(cfg, runs_root=sys.argv[1]).start()
deadline = time.monotonic() + 240  # a guard against hanging, not a timing assertion
while time.monotonic() < deadline and job.running:
    path = job.run_path
    if path is not None and len(runs.scalars(path).get("train/loss", [])) >= 3:
        break
    time.sleep(0.2)
job.stop()  # what the panel's Stop button calls, from the kernel's thread
job.wait(240)
run = runs.load_run(job.run_path)
last = run.checkpoint("last")
print("RESULT", json.dumps({"interrupted": job.interrupted, "error": repr(job.error), "running": job.running,
                            "status": run.status, "step": run.summary.get("step"),
                            "ckpt_step": load_checkpoint(last)["global_step"] if last.exists() else None}))
"""


@pytest.mark.slow
def test_stop_reaches_ddp_notebook_workers_and_ends_the_run_cleanly(tmp_path: Path) -> None:
    # The workers are forked: a Stop flag in the kernel's memory alone would never reach them, and
    # their clean stop arrives in the kernel as the text of a worker's exception.
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _DDP_STOP_SCRIPT, str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "RESULT " in proc.stdout, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["interrupted"] and result["error"] == "None" and not result["running"], result
    assert result["status"] == "interrupted" and 0 < result["step"] < 100000
    assert result["ckpt_step"] == result["step"]  # last.ckpt is where the run stopped: resumable there
