"""``int8-static``: calibrated int8 saved as safetensors, rebuilt exactly, compiled by AOTInductor."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lab.compress.int8_static as static
from lab import runs
from lab.compress import check_options, compress
from lab.errors import LabError
from lab.evaluate import example_batch, load_checked, load_data, run_config
from lab.models.gpt import GPT, GPTConfig
from lab.models.vision import CNN, CNNConfig

FAST = {"max_batches": 6, "repeats": 2, "warmup": 1}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compressed(tiny_gpt_run: runs.Run) -> tuple[runs.Run, dict]:
    return tiny_gpt_run, compress(tiny_gpt_run, "int8-static", calibration_batches=2, **FAST)


def test_report_counts_one_safetensors_file_and_checks_parity(compressed: tuple[runs.Run, dict]) -> None:
    run, r = compressed
    folder = run.compressed_dir("int8-static")
    assert r["files"] == [static.WEIGHTS_FILE]
    assert r["size_bytes"] == (folder / static.WEIGHTS_FILE).stat().st_size
    # About 0.5 here: in a 1-layer, 32-wide model the fp32 embeddings are a third of the weights
    # (gpt-nano itself measures 0.28x).
    assert r["deltas"]["size_ratio"] < 0.6
    parity = r["notes"]["parity"]
    assert parity["file_vs_calibrated"] <= parity["tolerance"] == static.PARITY_TOLERANCE
    assert parity["compiled_vs_eager_int8"] <= parity["int8_vs_fp32"]
    assert [12, 16] in parity["inputs"]  # a shorter, sliced sequence went through the compiled model
    assert "AOTInductor" in r["backend"]
    assert abs(r["deltas"]["quality_delta_rel"]) < 0.05
    assert not [p.name for p in run.compressed_root.iterdir() if p.name.startswith(".")]


def test_file_holds_int8_weights_and_keeps_the_tied_embedding_fp32(compressed: tuple[runs.Run, dict]) -> None:
    run, _ = compressed
    tensors = load_file(str(run.compressed_dir("int8-static") / static.WEIGHTS_FILE))
    linear = "transformer.h.0.mlp.c_fc.weight"
    assert tensors[static.Q + linear].dtype == torch.int8 and static.FP32 + linear not in tensors
    assert tensors[static.SCALE + linear].shape == (tensors[static.Q + linear].shape[0],)  # per output channel
    # The token lookup reads the tied embedding too, so it stays fp32, stored once (not as lm_head).
    assert tensors[static.FP32 + "transformer.wte.weight"].dtype == torch.float32
    assert not any("lm_head" in k for k in tensors)


def test_load_rebuilds_and_compiles_a_working_model(compressed: tuple[runs.Run, dict]) -> None:
    run, _ = compressed
    fp32 = load_checked(run).model
    ids = example_batch(load_data(run_config(run), "val", load_checked(run)), "val")[:3]
    graph = static.rebuild_from(run.compressed_dir("int8-static"), copy.deepcopy(fp32), ids)
    predict = static.load(run.compressed_dir("int8-static"), copy.deepcopy(fp32), ids)
    with torch.no_grad():
        for x in (ids, ids[:, :7], ids[:1, :1]):  # ids[:, :7] is not contiguous: the runner must not misread it
            eager, fast, ref = graph(x), predict(x), fp32(x)
            assert fast.shape == ref.shape
            assert (fast - eager).abs().max() <= (eager - ref).abs().max() + 1e-4


def test_artifact_of_another_model_is_refused(compressed: tuple[runs.Run, dict]) -> None:
    run, _ = compressed
    other = GPT(GPTConfig(vocab_size=load_checked(run).model.config.vocab_size, block_size=32, n_layer=2,
                          n_head=2, n_embd=32))
    with pytest.raises(LabError, match="does not fit the model"):
        static.rebuild_from(run.compressed_dir("int8-static"), other, torch.zeros(2, 32, dtype=torch.long))


def test_unsupported_model_and_machine_are_refused_before_work(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cnn = types.SimpleNamespace(model=CNN(CNNConfig()))
    with pytest.raises(LabError, match="supports the GPT and MLP models, not CNN"):
        static.int8_static(cnn, None, None, tmp_path)
    monkeypatch.setattr(static.platform, "machine", lambda: "aarch64")
    with pytest.raises(LabError, match="this CPU is aarch64"):
        static.int8_static(cnn, None, None, tmp_path)
    monkeypatch.setattr(static.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(static.shutil, "which", lambda name: None)
    with pytest.raises(LabError, match="C\\+\\+ compiler"):
        static.int8_static(cnn, None, None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_calibration_batches_must_be_at_least_one() -> None:
    with pytest.raises(LabError, match="calibration_batches"):
        check_options("int8-static", {"calibration_batches": 0})
    check_options("int8-static", {"calibration_batches": 4})
