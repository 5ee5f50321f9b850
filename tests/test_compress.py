"""``lab compress``: the framework (temp folder, atomic replace, cached original, deltas), int8, ONNX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lab.compress.quantize as quantize_mod
from lab import runs
from lab.cli import main
from lab.compress import METHODS, Artifact, compress, load_report
from lab.compress.onnx import FP32_TOLERANCE, session
from lab.errors import LabError
from lab.compress.quantize import load_int8
from lab.evaluate import load_checked

FAST = {"max_batches": 6, "repeats": 2, "warmup": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def _no_temp_left(run: runs.Run) -> None:
    leftovers = [p.name for p in run.compressed_root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_int8_dynamic_is_smaller_and_names_its_backend(tiny_gpt_run: runs.Run) -> None:
    r = compress(tiny_gpt_run, "int8-dynamic", **FAST)
    folder = tiny_gpt_run.compressed_dir("int8-dynamic")
    assert json.loads((folder / "report.json").read_text())["deltas"] == json.loads(json.dumps(r["deltas"]))
    assert r["deltas"]["size_ratio"] < 1
    assert r["size_bytes"] == (folder / "model_int8.pt").stat().st_size
    assert r["backend"] in r["notes"]["candidates"] and "p50_ms" in r["notes"]["candidates"][r["backend"]]
    assert "fp32_p50_ms" in r["notes"]["probe"]
    assert abs(r["deltas"]["quality_delta_rel"]) < 0.05  # int8 barely moves the loss
    for key in ("latency_ratio_b1", "latency_ratio_b32", "quality_delta"):
        assert key in r["deltas"]
    # speed ratios come from timing the original and the artifact in turns
    assert r["deltas"]["speedup_b32"] == r["paired_latency"]["b32"]["speedup"]
    assert r["paired_latency"]["b1"]["baseline_p50_ms"] > 0
    if r["backend"] == quantize_mod.TORCH_AO:  # what was saved loads back with weights_only=True
        fp32 = load_checked(tiny_gpt_run).model
        q = load_int8(folder / "model_int8.pt", fp32)
        x = torch.randint(0, 40, (2, 32))
        assert torch.isfinite(q(x)).all()
    _no_temp_left(tiny_gpt_run)


def test_onnx_parity_and_onnx_int8(tiny_gpt_run: runs.Run) -> None:
    r = compress(tiny_gpt_run, "onnx", **FAST)
    parity = r["notes"]["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= parity["tolerance"] == FP32_TOLERANCE
    assert [12, 16] in parity["inputs"]  # a shorter sequence: the dynamic axis works
    assert r["backend"].startswith("onnxruntime") and r["notes"]["exporter"].startswith("torch.onnx.export")
    assert abs(r["deltas"]["quality_delta_rel"]) < 1e-5  # same graph, same numbers (within fp32 reordering)
    q = compress(tiny_gpt_run, "onnx-int8", **FAST)
    assert q["deltas"]["size_ratio"] < 1 and q["files"] == ["model.int8.onnx"]
    assert "MatMulInteger" in q["notes"]["quantization"]["ops_in_graph"]
    assert not (tiny_gpt_run.compressed_dir("onnx-int8") / ".fp32.onnx").exists()
    assert abs(q["deltas"]["quality_delta_rel"]) < 0.05
    _no_temp_left(tiny_gpt_run)


def test_sessions_flush_denormals_without_changing_outputs(tiny_gpt_run: runs.Run) -> None:
    import onnxruntime as ort

    compress(tiny_gpt_run, "onnx-int8", **FAST)
    path = tiny_gpt_run.compressed_dir("onnx-int8") / "model.int8.onnx"
    sess = session(path, threads=1)
    assert sess.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # ORT's defaults
    x = torch.randint(0, 40, (4, 32)).numpy()  # causal attention: -inf in every row's softmax
    fast, ref = sess.run(None, {"input": x})[0], plain.run(None, {"input": x})[0]
    assert abs(fast - ref).max() < 1e-4


def test_original_is_evaluated_once(tiny_gpt_run: runs.Run) -> None:
    compress(tiny_gpt_run, "onnx", **FAST)
    report = tiny_gpt_run.eval_report("best")
    stamp = report.stat().st_mtime_ns
    compress(tiny_gpt_run, "onnx", **FAST)
    assert report.stat().st_mtime_ns == stamp  # cached: same checkpoint, same settings
    compress(tiny_gpt_run, "onnx", **{**FAST, "max_batches": 5})
    assert report.stat().st_mtime_ns != stamp  # other settings: measured again


def test_failed_method_keeps_previous_artifact(tiny_gpt_run: runs.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    compress(tiny_gpt_run, "int8-dynamic", **FAST)
    before = (tiny_gpt_run.compressed_dir("int8-dynamic") / "report.json").read_text()

    def broken(module, dm, cfg, out_dir: Path, **_) -> Artifact:
        (out_dir / "half.bin").write_bytes(b"0" * 100)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(quantize_mod, "int8_dynamic", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        compress(tiny_gpt_run, "int8-dynamic", **FAST)
    assert (tiny_gpt_run.compressed_dir("int8-dynamic") / "report.json").read_text() == before
    assert not (tiny_gpt_run.compressed_dir("int8-dynamic") / "half.bin").exists()
    _no_temp_left(tiny_gpt_run)


def test_all_writes_comparison_and_pareto(tiny_gpt_run: runs.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only this module's methods (prune/distill have their own tests); one entry that is missing.
    table = {k: METHODS[k] for k in ("int8-dynamic", "onnx", "onnx-int8")}
    table["missing"] = "lab.compress._no_such_module:fn"
    monkeypatch.setattr("lab.compress.METHODS", table)
    comparison = compress(tiny_gpt_run, "all", **FAST)
    assert [r["method"] for r in comparison["rows"]] == ["original", "int8-dynamic", "onnx", "onnx-int8"]
    assert "missing" in comparison["errors"]
    saved = json.loads((tiny_gpt_run.compressed_root / "comparison.json").read_text())
    assert saved["rows"][0]["size_ratio"] == 1.0 and saved["higher_is_better"] is False
    assert (tiny_gpt_run.compressed_root / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert load_report(tiny_gpt_run, "onnx")["method"] == "onnx"
    # The table's latency is the interleaved timing's: it agrees with each artifact's own speed-up.
    b = saved["latency_batch"]
    base = saved["rows"][0][f"latency_{b}_ms"]
    for row in saved["rows"][1:]:
        assert row[f"latency_{b}_ms"] == pytest.approx(base / row[f"speedup_{b}"])
        assert row["size_mib"] == pytest.approx(row["size_bytes"] / 2**20)


def test_unknown_method_and_bad_run_exit_2(tiny_gpt_run: runs.Run, capsys: pytest.CaptureFixture) -> None:
    root = str(tiny_gpt_run.path.parent.parent)
    assert main(["compress", tiny_gpt_run.name, "--method", "zip", "--runs_dir", root]) == 2
    err = capsys.readouterr().err
    assert "unknown compression method 'zip'" in err and "int8-dynamic" in err
    assert main(["compress", "nope/none", "--method", "onnx", "--runs_dir", root]) == 2
    assert main(["compress", tiny_gpt_run.name, "--method", "onnx", "--opt", "oops", "--runs_dir", root]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cli_compress_prints_deltas(tiny_gpt_run: runs.Run, capsys: pytest.CaptureFixture) -> None:
    root = str(tiny_gpt_run.path.parent.parent)
    assert main(["compress", tiny_gpt_run.name, "--method", "onnx-int8", "--max_batches", "3", "--repeats", "2",
                 "--runs_dir", root]) == 0
    out = capsys.readouterr().out
    assert "size_ratio" in out and "onnxruntime" in out


def test_truncated_checkpoint_leaves_no_compressed_folder(tiny_gpt_run: runs.Run, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    import shutil

    root = tmp_path / "runs"
    broken = root / "broken" / "run"
    shutil.copytree(tiny_gpt_run.path, broken, ignore=shutil.ignore_patterns("compressed", "reports"))
    ckpt = broken / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert main(["compress", "broken/run", "--method", "int8-dynamic", "--runs_dir", str(root)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not (broken / "compressed").exists() and not (broken / "reports").exists()


@pytest.mark.parametrize("method,options,needle", [
    ("prune", {"sparsity": 1.5}, "sparsity"),
    ("prune", {"heads": 0.5}, "does not take option(s) heads"),
    ("distill", {"temperature": 0}, "temperature"),
    ("int8-dynamic", {"steps": 10}, "does not take"),
    ("all", {"bogus": 1}, "bogus"),
])
def test_bad_options_are_refused_before_any_work(method: str, options: dict, needle: str) -> None:
    from lab.compress import check_options

    with pytest.raises(LabError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_options(method, options)
    check_options("all", {"steps": 5, "sparsity": 0.3})  # each method ignores the others' options
    # one name for the fraction pruned, as notebook 07 and `lab compress --sparsity` say it
    for pruning in ("prune", "prune-structured"):
        check_options(pruning, {"sparsity": 0.25})


def test_backend_probe_keeps_the_console_clean() -> None:
    # torchao's import logs "Failed to load" for GPU-only kernels; a fresh process shows whether it leaks.
    code = "from lab.compress.quantize import available; print(available())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert quantize_mod.TORCH_AO in proc.stdout
    assert "Failed to load" not in proc.stderr and "triton" not in proc.stderr.lower(), proc.stderr


# ---------------------------------------------------------------- the comparison table and the Pareto plot

def _report(size: int, loss: float, b32_ms: float, ratio: float | None = None) -> dict:
    r = {"size_bytes": size, "params": 1000, "backend": "test",
         "quality": {"primary": {"name": "loss", "value": loss, "higher_is_better": False}},
         "cost": {"latency": {"b1": {"p50_ms": b32_ms / 20}, "b32": {"p50_ms": b32_ms}}}}
    if ratio is not None:
        r["deltas"] = {"size_ratio": size / 3_300_000, "latency_ratio_b1": ratio, "latency_ratio_b32": ratio,
                       "speedup_b1": 1 / ratio, "speedup_b32": 1 / ratio, "quality_delta_rel": (loss - 2.3) / 2.3}
    return r


def _comparison() -> dict:
    from lab.compress import comparison_table

    original = {**_report(3_300_000, 2.30, 14.6), "run": "gpt-nano/x", "ckpt": "best", "split": "test"}
    # Each artifact's own measurement says nothing like-for-like (prune-structured measured alone on a
    # busy machine: 28.6 ms against the original's 14.6), its interleaved ratio does (x1.45 faster).
    # The three int8 artifacts sit almost on one point: their labels must not overprint.
    reports = {"int8-dynamic": _report(900_000, 2.3010, 10.0, 0.80), "int8-static": _report(905_000, 2.3020, 9.0, 0.60),
               "onnx-int8": _report(910_000, 2.3015, 8.0, 0.70), "prune": _report(3_300_000, 2.261, 15.0, 1.0),
               "prune-structured": _report(2_000_000, 2.5, 28.6, 1 / 1.45), "distill": {"error": "no student"}}
    return comparison_table(original, reports)


def test_comparison_latency_is_the_interleaved_timing() -> None:
    from lab.compress import comparison_text

    c = _comparison()
    rows = {r["method"]: r for r in c["rows"]}
    assert c["latency_batch"] == "b32" and c["errors"] == {"distill": "no student"}
    assert rows["prune-structured"]["latency_b32_ms"] == pytest.approx(14.6 / 1.45)
    assert rows["prune-structured"]["latency_b32_ms"] < rows["original"]["latency_b32_ms"]
    text = comparison_text(c)
    assert "size MiB" in text and "latency b32 ms" in text and " MB " not in text
    line = next(ln for ln in text.splitlines() if ln.startswith("prune-structured"))
    assert f"{14.6 / 1.45:.2f}" in line and "x1.45" in line


def test_pareto_plot_shows_the_comparisons_numbers_with_readable_labels() -> None:
    from matplotlib.text import Text

    from lab.compress import pareto_axes, pareto_figure

    c = _comparison()
    fig = pareto_figure(c, title="gpt-nano/x")
    fig.canvas.draw()  # labels take their final places when drawn
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 2
    for ax, (key, label) in zip(panels, pareto_axes(c)):
        plotted = [tuple(xy) for xy in ax.collections[0].get_offsets().tolist()]
        assert plotted == [(r[key], r["quality"]) for r in c["rows"]]
        assert ax.get_xlabel() == label
        assert sorted(t.get_text() for t in ax.texts) == sorted(r["method"] for r in c["rows"])
        boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the words, not their leader lines
        overlaps = [(a.get_text(), b.get_text()) for i, (a, ba) in enumerate(zip(ax.texts, boxes))
                    for b, bb in list(zip(ax.texts, boxes))[i + 1:] if ba.overlaps(bb)]
        assert overlaps == []
    assert "MiB" in pareto_axes(c)[0][1] and "batch 32" in pareto_axes(c)[1][1]
