"""The workshop notebooks: executed top to bottom in small mode, committed clean, served by JupyterLab.

Small mode (``LAB_NOTEBOOK_SMALL=1``, read by ``lab.widgets.workshop``) shrinks every training so
the series runs in a few minutes on 2 cores. Each notebook gets its own runs folder, so the checks
below see exactly what that notebook wrote.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import nbformat
import pytest

from lab import runs
from lab.config import flatten, load_config
from lab.ports import free_port
from lab.widgets.workshop import tiny

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
SERIES = ["00_environment", "01_data", "02_model", "03_train", "04_optimization", "05_distributed", "06_evaluate",
          "07_compress", "08_vision_and_tabular", "09_finetune", "10_speech", "11_recommend", "12_explain", "13_serve"]


def _text(nb: nbformat.NotebookNode) -> str:
    """Every stream and text/plain output of an executed notebook, as a reader sees it.

    A cell's stdout may arrive in several stream messages (split wherever the kernel
    flushed), so consecutive chunks are concatenated as they are, never with a separator
    that would depend on timing; other outputs and cells are set apart by a newline.
    """
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and parts and parts[-1][0] == "stream":
                parts[-1] = ("stream", parts[-1][1] + out.get("text", ""))
            elif out.get("output_type") == "stream":
                parts.append(("stream", out.get("text", "")))
            else:
                parts.append(("data", out.get("data", {}).get("text/plain", "")))
        parts.append(("cell", ""))  # a cell boundary ends a run of stream chunks
    return "\n".join(text for _, text in parts if text)


def _runs(root: Path, experiment: str | None = None) -> list[runs.Run]:
    return [r for r in runs.list_runs(root) if experiment is None or r.experiment == experiment]


def _loss_fell(run: runs.Run) -> bool:
    curve = runs.scalars(run)["train/loss"]
    return len(curve) >= 2 and curve[-1][2] < curve[0][2]


def _check_00(nb, root: Path) -> None:
    out = _text(nb)
    assert "counts:" in out and "pip:" in out
    # The report prints once, and no line of it is wider than a notebook cell (it would wrap).
    assert out.count("Large Model Lab doctor") == 1 and out.count("  status  check") == 1
    end = re.search(r"\d+ pass, \d+ warn, \d+ fail", out)
    report = out[out.index("Large Model Lab doctor"):end.start()]
    assert max(len(line) for line in report.splitlines() if not line.lstrip().startswith(("pip:", "conda:"))) <= 100


def _check_01(nb, root: Path) -> None:
    from lab.data.splits import split_sizes

    assert "unigram loss" in _text(nb) and "bpe vocabulary: 512" in _text(nb)
    sizes = split_sizes(10_000, 0.05, 0.0)  # exercise 2: test_fraction=0, val_fraction left at its default
    hints = nb.cells[-1].source
    assert f"{sizes['train'] // 100}/{sizes['val'] // 100}" in hints and "0.9/0.1" not in hints


def _check_02(nb, root: Path) -> None:
    out = _text(nb)
    assert "earlier positions unchanged: True" in out and "124,439,808" in out
    # The recommendation says how long its setup trains, beside the 8-GPU setup asked for.
    assert re.search(r"recommendation \(fits\): single on 1 device.* tokens in [\d.]+ \w+ \(the ddp setup on 8", out)


def _check_03(nb, root: Path) -> None:
    found = _runs(root, "gpt-nano")
    statuses = sorted(r.status for r in found)
    assert statuses == ["completed", "completed", "interrupted"], statuses
    completed = [r for r in found if r.status == "completed"]
    assert all(_loss_fell(r) and r.checkpoint("best").exists() for r in completed)
    stopped = next(r for r in found if r.status == "interrupted")
    assert stopped.checkpoint("last").exists()
    # The Stop demo is a run of normal length, so resuming it (exercise 4) finishes in minutes, and the
    # advice printed under it offers --resume because it has a checkpoint.
    assert stopped.config["trainer"]["max_steps"] <= 1500 and f"lab fit --resume {stopped.name}" in _text(nb)
    # The comparison is like for like: the two completed runs differ in the learning rate only,
    # and the first keeps the preset's heads (cell 4 restores them after the refused n_head=3).
    first, second = sorted(completed, key=lambda r: r.name)
    a, b = flatten(first.config), flatten(second.config)
    assert sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)) == ["optimizer.lr"]
    assert "the configs differ in: ['optimizer.lr']" in _text(nb)
    assert first.config["model"]["n_head"] == load_config("gpt-nano", tiny("gpt-nano", small=True)).model.n_head


def config_lrs(found: list[runs.Run]) -> list[float]:
    return [r.config["optimizer"]["lr"] for r in found]


def _check_04(nb, root: Path) -> None:
    from lab import sweep_study

    # The sweep's trials are runs of the same experiment, told apart by the sweep in their summary.json.
    trials = [r for r in _runs(root, "optimization") if "sweep" in r.summary]
    found = [r for r in _runs(root, "optimization") if "sweep" not in r.summary]
    assert len(found) >= 10 and all(r.status == "completed" for r in found)
    assert sum(_loss_fell(r) for r in found) >= len(found) - 2  # a deliberately too-high lr may not fall
    out = _text(nb)
    assert "suggested learning rate" in out
    # The finder says how it picked its rate, and that rate is the one the comparison trains.
    assert "how: lowest smoothed loss" in out and "lags" in out
    suggested = float(out.split("suggested learning rate: ")[1].split()[0])
    assert any(r.config["optimizer"]["lr"] == pytest.approx(suggested, rel=0.05) for r in found)
    assert not list(NOTEBOOKS_DIR.glob(".lr_find*")), "the LR finder's temporary checkpoint must not land in notebooks/"
    # The sweep: 3 finished trials (small mode) in its study under runs/optimization/sweeps/, each one run;
    # its best trial and the lab fit line that trains it again printed; its charts drawn.
    study = sweep_study.open_study(runs.sweep_dir(root, "optimization", "lr-schedule"))
    counts = sweep_study.counts(study)
    assert counts["complete"] + counts["pruned"] == 3 and counts["complete"] >= 1 and counts["fail"] == 0, counts
    assert sorted(r.summary["trial"] for r in trials) == [0, 1, 2]
    assert all(r.summary["sweep"] == "lr-schedule" and r.status == "completed" for r in trials)
    best = study.best_trial
    assert f"best: trial {best.number}, val/loss {best.value:.4f} ({best.user_attrs['run']})" in out
    assert best.user_attrs["run"] in {r.name for r in trials}
    command = re.search(r"train it again: (lab fit --config gpt-nano .*)", out).group(1)
    params = best.params
    assert f"--optimizer.lr {params['optimizer.lr']!r} --optimizer.schedule {params['optimizer.schedule']}" in command
    assert "--experiment optimization" in command
    shown = [o for c in nb.cells if "sweep_charts" in c.source
             for o in c.get("outputs", []) if o.get("output_type") == "display_data"]
    # PNGs drawn in the kernel: a Vega-Lite output would need the web (Altair 6 has no JupyterLab 4 renderer).
    assert len(shown) >= 3 and all("image/png" in o["data"] for o in shown), \
        "the optimization history, parallel coordinates and values at each validation, as images"


def _check_05(nb, root: Path) -> None:
    (run,) = _runs(root, "distributed")
    assert run.status == "completed" and run.config["trainer"]["strategy"] == "ddp_notebook"
    assert _loss_fell(run) and run.checkpoint("last").exists()
    assert "torchrun --nnodes=2" in _text(nb) and "#SBATCH --nodes=2" in _text(nb)
    markdown = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "wraps each transformer block" in markdown and "step time" in _text(nb)  # FSDP's figure explained; a time


def _check_06(nb, root: Path) -> None:
    (gpt,) = _runs(root, "gpt-nano")
    report = json.loads(gpt.eval_report("best").read_text())
    assert report["quality"]["perplexity"] > 1 and _loss_fell(gpt)
    # Three temperatures, each sample continuing the default prompt (a paragraph's "The ").
    out = _text(nb)
    samples = [out.split(f"--- temperature {t}\n")[1] for t in (0.5, 1.0, 1.5)]
    assert all(sample.startswith("The ") for sample in samples), [sample[:40] for sample in samples]
    (cnn,) = _runs(root, "digits-cnn")
    assert cnn.eval_report("best").exists() and (cnn.reports_dir / "confusion-best.png").exists()


def _check_07(nb, root: Path) -> None:
    (run,) = _runs(root, "gpt-nano")
    comparison = json.loads((run.compressed_root / "comparison.json").read_text())
    assert (run.compressed_root / "pareto.png").exists()
    assert {"original", "int8-dynamic"} <= {row["method"] for row in comparison["rows"]}
    assert (run.compressed_dir("int8-dynamic") / "report.json").exists()
    b = comparison["latency_batch"]
    out = _text(nb)
    assert f"latency {b} ms" in out and "size MiB" in out and " MB " not in out
    for row in comparison["rows"][1:]:  # the plotted and printed latency agrees with the speed-up
        assert abs(row[f"latency_{b}_ms"] * row[f"speedup_{b}"] / comparison["rows"][0][f"latency_{b}_ms"] - 1) < 1e-9


def _check_08(nb, root: Path) -> None:
    for experiment in ("digits-cnn", "digits-vit", "seed-mlp"):
        (run,) = _runs(root, experiment)
        assert run.status == "completed" and run.eval_report("best").exists(), experiment
    assert _loss_fell(_runs(root, "seed-mlp")[0])
    # The MLP's panel hides the GPT fields, shows its hidden layers and counts its 10 -> 20 -> 1 weights.
    assert "n_head shown for the MLP: False | hidden layers: 20 | 241 parameters" in _text(nb)


def _check_09(nb, root: Path) -> None:
    (base,) = _runs(root, "gpt-nano")  # the refused wider model left no run folder behind
    (lora,) = _runs(root, "gpt-nano-lora")
    assert base.status == lora.status == "completed" and lora.config["finetune"]["method"] == "lora"
    assert lora.config["model"]["init_from"] == str(base.path) and lora.summary["lineage"]["run"] == base.name
    # The LoRA checkpoint holds the adapters (and their optimizer states) only.
    assert lora.checkpoint("best").stat().st_size < base.checkpoint("best").stat().st_size / 2
    (scratch,) = _runs(root, "sentiment-scratch")
    (pretrained,) = _runs(root, "sentiment-pretrained")
    assert "lineage" not in scratch.summary and pretrained.summary["lineage"]["run"] == base.name
    assert scratch.eval_report("best").exists() and pretrained.eval_report("best").exists()
    a, b = flatten(scratch.config), flatten(pretrained.config)
    assert sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)) == [
        "experiment", "model.init_from", "model.vocab_size"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in lora.export_dir("hf").iterdir()}
    out = _text(nb)
    assert "refused: model.init_from" in out and "is not in the character tokenizer's vocabulary" in out
    share = re.search(r"trainable ([\d,]+) of ([\d,]+) parameters", out)
    assert 0 < int(share.group(1).replace(",", "")) < int(share.group(2).replace(",", ""))
    # The adapters trained and were merged in: the new text's validation loss moved down.
    before, after = map(float, re.search(r"base ([\d.]+) -> after LoRA ([\d.]+)", out).groups())
    assert after < before
    # transformers loads the export and computes what the lab's model computes, greedy decoding included.
    assert float(re.search(r"max \|logit difference\| .*: (\S+)", out).group(1)) < 1e-4
    assert "the lab's greedy sample is the same: True" in out


def _check_10(nb, root: Path) -> None:
    (run,) = _runs(root, "speech-cnn")
    report = json.loads(run.eval_report("best").read_text())
    assert run.status == "completed" and _loss_fell(run) and (run.reports_dir / "confusion-best.png").exists()
    assert report["quality"]["class_names"][:3] == ["zero", "one", "two"]
    assert (run.compressed_dir("int8-dynamic") / "report.json").exists()
    # Clips and a mistake were played (HTML audio players), the spectrogram and the confusion matrix drawn.
    players = [o for c in nb.cells for o in c.get("outputs", []) if "<audio" in o.get("data", {}).get("text/html", "")]
    assert len(players) >= 2
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) >= 3
    out = _text(nb)
    assert "test voices" in out and "spectrogram (bands, frames): (40, 41)" in out
    assert "heard as" in out or "no mistakes to hear" in out
    assert "size: " in out and "x of fp32" in out


def _check_11(nb, root: Path) -> None:
    (run,) = _runs(root, "recommender-mf")
    report = json.loads(run.eval_report("best").read_text())
    assert run.status == "completed" and report["kind"] == "ranking" and _loss_fell(run)
    q = report["quality"]
    assert q["oracle_ndcg_at_10"] >= q["ndcg_at_10"] > q["random_ndcg_at_10"]  # MF learned; the truth is the ceiling
    for method in ("int8-dynamic", "prune-structured"):
        assert (run.compressed_dir(method) / "report.json").exists(), method
    out = _text(nb)
    # The popularity curve's long tail, one user's two top-10 lists, and the compression table.
    assert "of the choices" in out and "held-out item is number" in out and "mean true percentile" in out
    assert "int8 embedding tables" in out and "Embedding tables int8 per row" in out


def _check_12(nb, root: Path) -> None:
    (cnn,) = _runs(root, "digits-cnn")
    (gpt,) = _runs(root, "gpt-nano")
    (path,) = cnn.explain_dir.glob("test-*.json")  # one digit, explained three times (the last report stays)
    report = json.loads(path.read_text())
    assert report["target_name"] == "7" or report["input"]["index"] >= 0
    assert report["compared"]["artifact"] == "int8-dynamic" and -1 <= report["compared"]["rank_correlation"] <= 1
    names = {p.name for p in cnn.explain_dir.iterdir()}
    label = report["label"]
    assert {f"{label}-attributions.png", f"{label}-checks.png", f"{label}-vs-int8-dynamic.png"} <= names
    assert any(p.name.endswith("-logit-lens.png") for p in gpt.explain_dir.iterdir())
    out = _text(nb)
    # The edge detector is shown failing the randomisation check; the lens reads the model's own output.
    assert "edge detector: rank correlation with itself after randomisation 1.00 -> FAIL" in out
    assert "the last layer reads the model's own output: True" in out and "convergence delta" in out
    assert "completeness: " in out and "integrated_gradients: randomisation " in out


def _check_13(nb, root: Path) -> None:
    (run,) = _runs(root, "gpt-nano")
    assert run.status == "completed" and (run.compressed_dir("int8-dynamic") / "report.json").exists()
    out = _text(nb)
    assert "ready: True" in out and "int8 server ready: True" in out and "'artifact': 'int8-dynamic'" in out
    # A completion came back over plain HTTP and the openai client got the same greedy text.
    text = ast.literal_eval(re.search(r"^completion: (.+)$", out, re.M).group(1))
    assert len(text) == 60 and "'completion_tokens': 60" in out, out[:2000]  # a character per token
    assert "same text as with requests: True" in out
    assert "max_tokens: 10000 is more than this server's 512" in out  # the refused request, in one line
    assert int(re.search(r"streamed pieces: (\d+)", out).group(1)) > 1  # text arrived in pieces
    # The metrics counted the calls above: 3 answered completions, 60 + 60 + 80 tokens, one refused request.
    answered, tokens = map(int, re.search(r"completions answered: (\d+) \| generated tokens: (\d+)", out).groups())
    assert answered >= 3 and tokens >= 200, (answered, tokens)
    assert 'lab_serve_requests_total{endpoint="/v1/completions",status="400"} = 1' in out
    fp32_ms, int8_ms = map(int, re.search(r"median fp32 (\d+) ms, int8 (\d+) ms", out).groups())
    assert fp32_ms > 0 and int8_ms > 0
    # Both servers stopped: their threads ended and their ports refuse connections (checked again here).
    stopped = re.findall(r"stopped: thread alive (\w+), port (\d+) refuses connections: (\w+)", out)
    assert len(stopped) == 2 and all(alive == "False" and refused == "True" for alive, _, refused in stopped), stopped
    for _, port, _ in stopped:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", int(port))) != 0


CHECKS: dict[str, Callable[[nbformat.NotebookNode, Path], None]] = {
    name: globals()[f"_check_{name[:2]}"] for name in SERIES}


def test_the_series_is_complete() -> None:
    assert [p.stem for p in NOTEBOOKS] == SERIES
    assert (NOTEBOOKS_DIR / "README.md").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_goals_and_ends_with_exercises(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "What you will learn" in nb.cells[0].source
    assert nb.cells[-1].cell_type == "markdown"
    assert "## Exercises" in nb.cells[-1].source and "Hints" in nb.cells[-1].source
    assert "import lab" in "".join(c.source for c in nb.cells) or "from lab" in "".join(c.source for c in nb.cells)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom_in_small_mode(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    root = tmp_path / "runs"
    # The kernel inherits this process's environment.
    monkeypatch.setenv("LAB_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    # nbclient raises CellExecutionError on the first failing cell, naming it.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}).execute()
    CHECKS[path.stem](nb, root)
    # Students read every line a cell prints: no Lightning warning may reach them.
    warned = [o["text"] for c in nb.cells for o in c.get("outputs", [])
              if o.get("name") == "stderr" and "site-packages/lightning" in o["text"]]
    assert not warned, warned[0][:500]


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks(tmp_path: Path) -> None:
    port, token = free_port(), "lab-test-token"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={NOTEBOOKS_DIR}",
         # CI containers often run as root, which Jupyter refuses without this flag.
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/contents", headers={"Authorization": f"token {token}"})
        deadline, listing = time.monotonic() + 120, None  # a guard against a server that never starts
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == 200
                    listing = json.loads(response.read())
                    break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, f"JupyterLab did not answer: {proc.stderr.read().decode()[-2000:] if proc.poll() is not None else 'still starting'}"
        names = {item["name"] for item in listing["content"]}
        assert {p.name for p in NOTEBOOKS} <= names
        # Without the token the API refuses: the server is not open to anyone on the machine.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5)
            refused = False
        except urllib.error.HTTPError as e:
            refused = e.code == 403
        assert refused
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/lab", headers=request.headers),
                                    timeout=10) as page:
            assert page.status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
