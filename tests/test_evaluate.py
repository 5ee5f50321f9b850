"""``lab evaluate``: deterministic quality, measured cost, reports, and refusals of bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lab import runs
from lab.cli import main
from lab.config import load_config
from lab.cost import cost
from lab.evaluate import evaluate, load_checked, load_data, quality, run_config
from lab.train import fit

FAST = {"repeats": 2, "warmup": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt_run(tiny_gpt_run: runs.Run) -> runs.Run:
    """conftest's tiny gpt-nano run (one per test module)."""
    return tiny_gpt_run


@pytest.fixture(scope="module")
def root(gpt_run: runs.Run) -> Path:
    """That run's runs root: the other runs of this module are trained beside it."""
    return gpt_run.path.parent.parent


@pytest.fixture(scope="module")
def cnn_run(root: Path) -> runs.Run:
    return fit(load_config("digits-cnn", {"trainer.max_steps": 30, "trainer.val_check_interval": 15}),
               runs_root=root, progress=False)


def test_lm_report_is_deterministic_and_consistent(gpt_run: runs.Run) -> None:
    a = evaluate(gpt_run, **FAST)
    b = evaluate(gpt_run, **FAST)
    assert a["quality"] == b["quality"]  # bit-identical figures
    q = a["quality"]
    assert q["perplexity"] == pytest.approx(math.exp(q["loss"]), rel=1e-12)
    assert q["bits_per_token"] == pytest.approx(q["loss"] / math.log(2))
    assert q["bits_per_character"] == q["bits_per_token"]  # character tokenizer
    # the same loss Lightning's test loop computed at the end of training (all test windows)
    assert q["loss"] == pytest.approx(gpt_run.summary["test"]["test/loss"], rel=1e-4)
    assert a["params"] == gpt_run.summary["model"]["params"]
    saved = json.loads(gpt_run.eval_report("best").read_text())
    assert saved["quality"] == json.loads(json.dumps(b["quality"]))
    c = a["cost"]
    assert c["threads"] == torch.get_num_threads() and set(c["latency"]) == {"b1", "b32"}
    for entry in c["latency"].values():
        assert 0 < entry["p50_ms"] <= entry["p95_ms"] and entry["tokens_per_s"] > 0
    assert "VmHWM" in c["peak_memory"]["method"] or "getrusage" in c["peak_memory"]["method"]
    assert a["size_bytes"] < a["checkpoint"]["bytes"]  # the checkpoint also holds optimizer state
    curves = runs.scalars(gpt_run)
    assert "eval/best/test/loss" in curves and "eval/best/cost/latency_b32_p50_ms" in curves
    assert curves["eval/best/test/loss"][-1][2] == pytest.approx(q["loss"], rel=1e-6)


def test_val_split_and_last_checkpoint(gpt_run: runs.Run) -> None:
    r = evaluate(gpt_run, "last", "val", max_batches=3, batch_sizes=(1, 4), log=False, **FAST)
    assert r["split"] == "val" and r["label"] == "last" and r["quality"]["tokens"] == 3 * 12 * 32
    assert set(r["cost"]["latency"]) == {"b1", "b4"}
    assert gpt_run.eval_report("last").exists()


def test_quality_and_cost_take_any_predict_function(gpt_run: runs.Run) -> None:
    module = load_checked(gpt_run)
    dm = load_data(run_config(gpt_run), "test", module)
    direct = quality(module.model, dm, "test", "lm", max_batches=4)
    wrapped = quality(lambda x: module.model(x).numpy(), dm, "test", "lm", max_batches=4)  # numpy out, like ORT
    assert direct["loss"] == wrapped["loss"] and direct["tokens"] == 4 * 12 * 32
    x = next(iter(dm.test_dataloader()))[0]
    c = cost(module.model, x, batch_sizes=(2,), warmup=0, repeats=1, threads=1)
    assert c["threads"] == 1 and c["latency"]["b2"]["batch"] == 2 and c["input_shape"] == [32]


def test_classifier_confusion_matrix(cnn_run: runs.Run) -> None:
    r = evaluate(cnn_run, **FAST)
    q = r["quality"]
    cm = torch.tensor(q["confusion_matrix"])
    dm = load_data(run_config(cnn_run), "test")
    assert cm.shape == (10, 10) and int(cm.sum()) == dm.split_sizes["test"] == q["samples"]
    assert q["accuracy"] == pytest.approx(float(cm.diag().sum() / cm.sum()))
    assert q["accuracy"] == pytest.approx(cnn_run.summary["test"]["test/accuracy"], abs=1e-6)
    assert len(q["precision"]) == len(q["recall"]) == 10 and 0 <= q["macro_f1"] <= 1
    assert sum(q["support"]) == dm.split_sizes["test"]
    png = cnn_run.reports_dir / "confusion-best.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["cost"]["input_shape"] == [1, 8, 8]
    # the same matrix goes to the run's TensorBoard as an image, beside the eval scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(cnn_run.path), size_guidance={"images": 0})
    acc.Reload()
    assert "eval/best/confusion_matrix" in acc.Tags()["images"]
    assert acc.Images("eval/best/confusion_matrix")[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    assert runs.scalars(cnn_run)["eval/best/test/accuracy"][-1][2] == pytest.approx(q["accuracy"])


def test_regressor_figures(root: Path) -> None:
    run = fit(load_config("seed-mlp", {"trainer.max_steps": 60}), runs_root=root, progress=False)
    q = evaluate(run, **FAST)["quality"]
    assert q["mse"] == pytest.approx(run.summary["test"]["test/loss"], rel=1e-4)
    assert q["r2"] == pytest.approx(run.summary["test"]["test/r2"], rel=1e-3)
    assert q["rmse"] == pytest.approx(math.sqrt(q["mse"])) and q["mae"] > 0
    assert q["primary"] == {"name": "mse", "value": q["mse"], "higher_is_better": False}


# ------------------------------------------------------------------ bad input: exit 2, nothing written


def _copy(run: runs.Run, root: Path, name: str) -> Path:
    dst = root / "broken" / name
    shutil.copytree(run.path, dst, ignore=shutil.ignore_patterns("reports", "compressed", "export"))
    return dst


def _refused(argv: list[str], capsys: pytest.CaptureFixture, needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err


def test_nonexistent_run_and_not_a_run(root: Path, capsys: pytest.CaptureFixture) -> None:
    _refused(["evaluate", "nope/nothing", "--runs_dir", str(root)], capsys, "not a run folder")
    (root / "empty-exp" / "not-a-run").mkdir(parents=True)
    _refused(["evaluate", "empty-exp/not-a-run", "--runs_dir", str(root)], capsys, "not a run folder")
    assert not (root / "empty-exp" / "not-a-run" / "reports").exists()


def test_missing_truncated_and_mismatched_checkpoints(gpt_run: runs.Run, root: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    missing = _copy(gpt_run, root, "missing")
    (missing / "checkpoints" / "best.ckpt").unlink()
    _refused(["evaluate", "broken/missing", "--runs_dir", str(root)], capsys, "best.ckpt")

    truncated = _copy(gpt_run, root, "truncated")
    ckpt = truncated / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    _refused(["evaluate", "broken/truncated", "--runs_dir", str(root)], capsys, "truncated or corrupted")

    mismatched = _copy(gpt_run, root, "mismatched")
    cfg = yaml.safe_load((mismatched / "config.yaml").read_text())
    cfg["model"]["n_embd"] = 48
    (mismatched / "config.yaml").write_text(yaml.safe_dump(cfg))
    _refused(["evaluate", "broken/mismatched", "--runs_dir", str(root)], capsys, "does not match")
    for folder in (missing, truncated, mismatched):
        assert not (folder / "reports").exists()
    _refused(["evaluate", gpt_run.name, "--split", "train", "--runs_dir", str(root)], capsys, "--split")


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_checkpoint_is_refused_and_never_runs(gpt_run: runs.Run, root: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    state = torch.load(gpt_run.checkpoint("best"), weights_only=True)
    state["payload"] = _Exploit(marker)
    torch.save(state, evil)
    _refused(["evaluate", gpt_run.name, "--ckpt", str(evil), "--runs_dir", str(root)], capsys, "refused")
    assert not marker.exists()
    assert not gpt_run.eval_report("evil").exists()
