"""``int8-static``: calibrated int8 saved as safetensors, rebuilt exactly, compiled by AOTInductor."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lab.compress.int8_static as static
from lab import runs
from lab.config import load_config
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


def _activation_quant_maxes(graph: torch.fx.GraphModule) -> set[int]:
    """quant_max of every per-tensor (activation) quantize op in a converted graph."""
    op = torch.ops.quantized_decomposed.quantize_per_tensor.default
    return {n.args[4] for n in graph.graph.nodes if n.target == op}


@pytest.mark.parametrize("seven_bit", [True, False])
def test_activation_range_follows_the_flag(seven_bit: bool) -> None:
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    batches = [torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    graph = static._convert(static.calibrate(model, batches, seven_bit))
    assert _activation_quant_maxes(graph) == {127 if seven_bit else 255}


def test_seven_bit_activations_exactly_where_the_cpu_lacks_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert static.seven_bit_activations() is False
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    assert static.seven_bit_activations() is True
    monkeypatch.delattr(torch.cpu, "_is_vnni_supported")
    assert static.seven_bit_activations() is True  # unknown: the range that cannot saturate


def test_artifact_records_its_activation_range_and_an_8_bit_one_is_refused_without_vnni(
        compressed: tuple[runs.Run, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, r = compressed
    path = run.compressed_dir("int8-static") / static.WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lab"])
    assert meta["seven_bit_activations"] is static.seven_bit_activations()
    fp32 = load_checked(run).model
    ids = torch.zeros(2, 8, dtype=torch.long)
    assert _activation_quant_maxes(static.rebuild_from(path.parent, copy.deepcopy(fp32), ids)) == {
        127 if meta["seven_bit_activations"] else 255}
    # The same weights marked as calibrated for 8-bit activations, loaded where there is no VNNI.
    save_file(load_file(str(path)), str(tmp_path / static.WEIGHTS_FILE),
              metadata={"lab": json.dumps({**meta, "seven_bit_activations": False})})
    monkeypatch.setattr(static, "seven_bit_activations", lambda: True)
    with pytest.raises(LabError, match="8-bit activations, for CPUs with VNNI"):
        static.rebuild_from(tmp_path, copy.deepcopy(fp32), ids)


def test_artifact_of_another_model_is_refused(compressed: tuple[runs.Run, dict]) -> None:
    run, _ = compressed
    other = GPT(GPTConfig(vocab_size=load_checked(run).model.config.vocab_size, block_size=32, n_layer=2,
                          n_head=2, n_embd=32))
    with pytest.raises(LabError, match="does not fit the model"):
        static.rebuild_from(run.compressed_dir("int8-static"), other, torch.zeros(2, 32, dtype=torch.long))


def test_unsupported_model_and_machine_are_refused_before_work(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cnn = types.SimpleNamespace(model=CNN(CNNConfig()))
    cfg = load_config("digits-cnn")  # its family's record says int8-static was not verified on it
    with pytest.raises(LabError, match="supports gpt, mlp models, not cnn"):
        static.int8_static(cnn, None, cfg, tmp_path)
    monkeypatch.setattr(static.platform, "machine", lambda: "aarch64")
    with pytest.raises(LabError, match="this CPU is aarch64"):
        static.int8_static(cnn, None, cfg, tmp_path)
    monkeypatch.setattr(static.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(static.shutil, "which", lambda name: None)
    with pytest.raises(LabError, match="C\\+\\+ compiler"):
        static.int8_static(cnn, None, cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_calibration_batches_must_be_at_least_one() -> None:
    with pytest.raises(LabError, match="calibration_batches"):
        check_options("int8-static", {"calibration_batches": 0})
    check_options("int8-static", {"calibration_batches": 4})
