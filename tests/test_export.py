"""``lab export``: self-contained ONNX, TorchScript and safetensors folders that reproduce the model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import lab.export as export_mod
from lab import runs
from lab.cli import main
from lab.config import load_config
from lab.evaluate import load_checked
from lab.export import export, load_safetensors
from lab.train import fit



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt_run(tiny_gpt_run: runs.Run) -> runs.Run:
    """conftest's tiny gpt-nano run (one per test module)."""
    return tiny_gpt_run


@pytest.fixture(scope="module")
def root(gpt_run: runs.Run) -> Path:
    """That run's runs root: the other runs of this module are trained beside it."""
    return gpt_run.path.parent.parent


def test_safetensors_round_trip_gives_identical_logits(gpt_run: runs.Run) -> None:
    folder = export(gpt_run, "safetensors")
    assert folder == gpt_run.export_dir("safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.yaml", "model.safetensors",
                                                        "tokenizer.json"]
    original = load_checked(gpt_run).model
    model = load_safetensors(folder)
    assert model.lm_head.weight is model.transformer.wte.weight  # re-tied, not two copies
    x = torch.randint(0, original.config.vocab_size, (3, 32))
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert cfg["model"]["vocab_size"] == original.config.vocab_size
    readme = (folder / "README.md").read_text()
    assert "load_safetensors" in readme and "def generate" in readme


def test_safetensors_loads_with_no_pickle(gpt_run: runs.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = export(gpt_run, "safetensors")
    original = load_checked(gpt_run, "best").model.eval()  # (the checkpoint itself is torch.load'ed)

    def no_pickle(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr("pickle.loads", no_pickle)
    monkeypatch.setattr("pickle.load", no_pickle)
    loaded = load_safetensors(folder)
    mine, theirs = original.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = torch.randint(0, original.config.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))


def test_classifier_safetensors_keeps_batchnorm_buffers(root: Path) -> None:
    run = fit(load_config("digits-cnn", {"trainer.max_steps": 20, "trainer.val_check_interval": 10}),
              runs_root=root, progress=False)
    folder = export(run, "safetensors")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_safetensors(folder)(x), load_checked(run).model(x))
    assert not (folder / "tokenizer.json").exists() and "argmax" in (folder / "README.md").read_text()


def test_onnx_and_torchscript_exports(gpt_run: runs.Run) -> None:
    import onnxruntime as ort

    onnx_dir = export(gpt_run, "onnx")
    sess = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    original = load_checked(gpt_run).model
    x = torch.randint(0, original.config.vocab_size, (2, 20))  # another batch and sequence length
    with torch.no_grad():
        ref = original(x)
        assert torch.allclose(torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]), ref, atol=1e-3)
        ts_dir = export(gpt_run, "torchscript")
        assert torch.allclose(torch.jit.load(str(ts_dir / "model.torchscript.pt"))(x), ref, atol=1e-5)
    for d in (onnx_dir, ts_dir):
        assert (d / "config.yaml").exists() and (d / "tokenizer.json").exists()
        assert "generate(" in (d / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_readme_example_runs_in_the_export_folder(gpt_run: runs.Run, fmt: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    folder = export(gpt_run, fmt)
    readme = (folder / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(folder)  # the example names its files relative to the folder, as a user runs it
    exec(compile(code, str(folder / "README.md"), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert printed.startswith("def ") and len(printed) > len("def ") + 50  # the prompt, then generated text


def test_bad_format_and_failed_export_leave_nothing(gpt_run: runs.Run, root: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["export", gpt_run.name, "--format", "pickle", "--runs_dir", str(root)]) == 2
    assert "unknown export format" in capsys.readouterr().err
    assert not gpt_run.export_dir("pickle").exists()

    def boom(model, batches, path):
        path.write_bytes(b"half")
        raise RuntimeError("killed mid-export")

    shutil.rmtree(gpt_run.export_dir("onnx"), ignore_errors=True)
    monkeypatch.setitem(export_mod._WRITERS, "onnx", boom)
    with pytest.raises(RuntimeError):
        export(gpt_run, "onnx")
    export_root = gpt_run.path / "export"
    assert not gpt_run.export_dir("onnx").exists()
    assert not [p for p in export_root.iterdir() if p.name.startswith(".")]


def test_cli_export(gpt_run: runs.Run, root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ship"
    assert main(["export", gpt_run.name, "--format", "safetensors", "--out", str(out), "--runs_dir", str(root)]) == 0
    assert "exported" in capsys.readouterr().out and (out / "model.safetensors").exists()
    assert main(["export", "no/run", "--format", "onnx", "--runs_dir", str(root)]) == 2


def test_export_never_replaces_a_foreign_folder(gpt_run: runs.Run, tmp_path: Path) -> None:
    from lab.errors import LabError

    precious = tmp_path / "project"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(LabError, match="not an earlier"):
        export(gpt_run, "safetensors", out=precious)
    assert (precious / "notes.txt").read_text() == "keep me"
