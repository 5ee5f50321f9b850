"""The speech family end to end: config, fit on the bundled spoken digits, evaluate, compress, export, plan,
the panel and the dashboard's picture of the inputs."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from conftest import listed_and_compared
from lab import dashboard_data, runs
from lab.config import load_config
from lab.data.espeak import WORDS
from lab.errors import ConfigError, LabError
from lab.families import family
from lab.families.speech import PICTURE_TAG, KeywordCNNConfig, complete
from lab.tfevents import read_events

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"trainer.max_steps": 30, "trainer.val_check_interval": 15, "trainer.limit_val_batches": 2,
        "trainer.log_every_n_steps": 5, "model.channels": [8, 16], "model.hidden": 32, "optimizer.warmup_steps": 3}


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory: pytest.TempPathFactory) -> runs.Run:
    from lab.train import fit

    return fit(load_config("speech-cnn", TINY), runs_root=tmp_path_factory.mktemp("runs"), progress=False)


def test_the_preset_reads_the_spectrogram_its_data_makes() -> None:
    cfg = load_config("speech-cnn")
    assert isinstance(cfg.model, KeywordCNNConfig) and cfg.data.name == "speech"
    assert (cfg.model.image_size, cfg.model.width) == (cfg.data.n_mels, cfg.data.frames) == (40, 41)
    assert family("keyword-cnn").task == "classifier" and family("keyword-cnn").metric == "val/accuracy"
    with pytest.raises(ConfigError, match=r"model.image_size = 40 .*--model.image_size 32"):
        load_config("speech-cnn", {"data.n_mels": 32})
    with pytest.raises(ConfigError, match=r"model.image_width = 41 .*--model.image_width 51"):
        load_config("speech-cnn", {"data.hop_ms": 20})
    assert load_config("speech-cnn", {"data.n_mels": 32, "model.image_size": 32}).model.image_size == 32
    with pytest.raises(ConfigError, match="model.num_classes"):
        load_config("speech-cnn", {"model.num_classes": 1})
    with pytest.raises(ConfigError, match="data.name"):
        load_config("speech-cnn", {"data.name": "digits"})


def test_the_data_decides_the_keywords_unless_the_config_disagrees() -> None:
    dm = types.SimpleNamespace(class_names=["yes", "no"])
    done = complete(KeywordCNNConfig(), dm)
    assert done.labels == ("yes", "no") and done.num_classes == 2 and KeywordCNNConfig().labels is None
    with pytest.raises(ConfigError, match="model.num_classes = 3"):
        complete(KeywordCNNConfig(num_classes=3), dm)
    with pytest.raises(ConfigError, match="model.labels"):
        complete(KeywordCNNConfig(labels=("no", "maybe")), dm)
    with pytest.raises(LabError, match="num_classes is null"):
        complete(KeywordCNNConfig(), None)


def test_a_run_trains_on_held_out_voices_and_records_its_keywords(speech_run: runs.Run) -> None:
    run = speech_run
    assert run.status == "completed"
    assert run.config["model"]["labels"] == list(WORDS) and run.config["model"]["num_classes"] == 10
    loss = runs.scalars(run)["train/loss"]
    assert loss[-1][2] < loss[0][2]
    assert 0 <= run.summary["test"]["test/accuracy"] <= 1
    # The picture of the inputs: in TensorBoard, and on the dashboard's Run page.
    (step, _, png), = read_events(run.path).images[PICTURE_TAG]
    assert step == 0 and png.startswith(b"\x89PNG")
    assert [p["tag"] for p in dashboard_data.pictures(run)] == [PICTURE_TAG]


def test_evaluate_names_the_words_and_int8_shrinks_the_model(speech_run: runs.Run) -> None:
    from lab.compress import compress
    from lab.evaluate import evaluate

    report = evaluate(speech_run, max_batches=2, repeats=1)
    q = report["quality"]
    assert report["kind"] == "classifier" and q["class_names"] == list(WORDS) and len(q["confusion_matrix"]) == 10
    assert Path(report["confusion_png"]).is_file()
    (rep,) = dashboard_data.eval_reports(speech_run)
    assert rep["png"] is not None
    result = compress(speech_run, "int8-dynamic", max_batches=2, repeats=1)
    assert result["deltas"]["size_ratio"] < 0.6 and "Linear" in result["notes"]["quantized"]


def test_export_and_plan_see_the_model_fit_built(speech_run: runs.Run) -> None:
    from lab.export import export, load_safetensors
    from lab.plan import plan

    folder = export(speech_run, "safetensors")
    model = load_safetensors(folder)
    x = torch.randn(2, 1, 40, 41)
    assert model.eval()(x).shape == (2, 10)
    p = plan(load_config("speech-cnn", TINY), device="cpu", with_recommendation=False)
    assert p.model.params == speech_run.summary["model"]["params"] and p.flops_per_unit > 0


def test_the_panel_shows_the_cnn_fields_of_the_speech_preset() -> None:
    from lab.widgets.mapping import assess, state_from_config

    state = state_from_config("speech-cnn")
    assert state["hidden"] == 64 and state["n_head"] is None and state["batch_size"] == 64
    a = assess({**state, "hidden": 32}, device="cpu")
    built = family("keyword-cnn").build(load_config("speech-cnn", {"model.hidden": 32, "model.num_classes": 10}).model)
    assert a.ok and a.params == sum(p.numel() for p in built.parameters())


@pytest.mark.slow
def test_the_runs_compare_and_run_pages_show_a_speech_run(speech_run: runs.Run, dashboard_page) -> None:
    listed_and_compared(dashboard_page, speech_run, "keyword-cnn", "test/accuracy")
    page = dashboard_page(speech_run.path.parents[1], "run.py", run=speech_run.name)  # its logged spectrograms
    assert not page.exception and len(page.get("image")) >= 1 and dashboard_data.pictures(speech_run)
