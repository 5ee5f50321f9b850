"""The notebook widgets without a browser: state <-> config, refusals, estimates, live training, Stop, comparer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab import runs
from lab.callbacks import Throughput
from lab.config import list_presets, load_config
from lab.errors import ConfigError
from lab.models.gpt import GPT, GPTConfig
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


def test_estimates_match_the_model_and_grow_with_depth() -> None:
    a1 = assess({**state_from_config("gpt-nano"), "n_layer": 1})
    a4 = assess(state_from_config("gpt-nano"))
    # The planner plans a character vocabulary as 256 tokens; build the same GPT for real.
    real = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128)).num_params()
    assert a4.ok and a4.params == real
    assert a1.params < a4.params and a1.flops_per_unit < a4.flops_per_unit
    assert a4.unit == "tokens" and a4.memory_bytes and a4.memory_bytes > 0 and a4.fits


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
    assert assess(state, in_notebook=False).reason == "" or "ddp_notebook" not in assess(state, in_notebook=False).reason


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


def test_panel_preset_switch_disables_fields_the_model_lacks() -> None:
    panel = HyperparameterPanel("gpt-nano", base=lambda p: workshop.tiny(p, small=True))
    assert panel.controls["n_layer"].value == 1 and panel.controls["max_steps"].value == 30
    panel.controls["preset"].value = "seed-mlp"
    assert panel.controls["n_head"].disabled and panel.state["n_head"] is None
    assert panel.controls["lr"].value == 0.05 and panel.assessment.ok
    assert panel.assessment.config.model.name == "mlp"
    panel.controls["preset"].value = "gpt-nano"
    assert not panel.controls["n_head"].disabled and panel.state["n_head"] == 2
    panel.load_preset("digits-cnn")  # from code: the dropdown follows
    assert panel.controls["preset"].value == "digits-cnn" and panel.assessment.config.model.name == "cnn"
    assert panel.controls["block_size"].disabled and not panel.controls["dropout"].disabled


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
    panel.train_button.click()
    run = panel.wait(timeout=300)
    assert panel.job.error is None and run is not None
    assert run.path.parent.parent == tmp_path and runs.load_run(run.path).status == "completed"
    steps, losses = series(panel.feed.history, "loss")
    assert steps[-1] == 12 and len(losses) == 12
    assert series(panel.feed.history, "val_loss")[1], "validation points reach the chart"
    assert panel.chart.value[:8] == b"\x89PNG\r\n\x1a\n"
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


def test_comparer_widget_lists_and_compares_runs(tmp_path: Path) -> None:
    a, b = _fake_run(tmp_path, 0.05, [3.0, 2.0, 1.0]), _fake_run(tmp_path, 0.01, [3.0, 2.5, 2.0])
    c = RunComparer(tmp_path)
    assert set(c.picker.options) == {a.name, b.name}
    c.select([a.name, b.name])
    assert "optimizer.lr" in c.table.value and c.chart.value[:4] == b"\x89PNG"
    assert c.tag.value == "train/loss"


def test_panel_widens_sliders_to_hold_any_value() -> None:
    panel = HyperparameterPanel("gpt-nano", base={"optimizer.lr": 3e-7, "data.batch_size": 1000})
    assert panel.controls["lr"].value == pytest.approx(3e-7) and panel.controls["batch_size"].value == 1000
    assert panel.assessment.config.optimizer.lr == pytest.approx(3e-7)
