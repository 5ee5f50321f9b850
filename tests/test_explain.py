"""lab.explain: a run's prediction explained, pictured and written where people look; refusals in one line.

Runs: a digits CNN and a 1-layer character GPT trained a few steps in their own runs folder, and a
tiny sentiment classifier. What the explanations are worth is tested in tests/test_explain_checks.py;
here: that each family gets what its record declares, that the files, the TensorBoard images and
the JSON report agree with what ``explain`` returned, the CLI, a compressed artifact beside its
original, and every refusal.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lab import runs
from lab.cli import main
from lab.config import load_config
from lab.errors import LabError
from lab.explain import CHECK_SAMPLES, explain, load
from lab.families import family, register, unregister

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

TINY = {"trainer.val_check_interval": 10, "trainer.limit_val_batches": 2, "optimizer.warmup_steps": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explain-runs")


@pytest.fixture(scope="module")
def cnn_run(root: Path) -> runs.Run:
    from lab.train import fit

    return fit(load_config("digits-cnn", {**TINY, "trainer.max_steps": 40}), runs_root=root, progress=False)


@pytest.fixture(scope="module")
def gpt_run(root: Path) -> runs.Run:
    from lab.train import fit

    tiny = {**TINY, "trainer.max_steps": 10, "model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2,
            "model.block_size": 32}
    return fit(load_config("gpt-nano", tiny), runs_root=root, progress=False)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def _image_tags(run: runs.Run) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = []
    for events in run.path.glob("events.out.tfevents.*.explain"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        tags += acc.Tags()["images"]
    return tags


def test_a_digit_explained_in_pictures_json_and_tensorboard(cnn_run: runs.Run) -> None:
    result = explain(cnn_run, index=3)
    assert result.label == "test-3" and result.inputs == "image" and result.task == "classifier"
    assert set(result.maps) == {"integrated_gradients", "saliency", "occlusion"}
    assert all(torch.tensor(m).shape == (1, 8, 8) for m in result.maps.values())
    assert result.attention is None and result.lens is None  # not what a CNN's record declares
    # The explained class is the prediction, with its probability, first in the top list.
    module = load(cnn_run).model
    x = load(cnn_run).test_input(3)
    with torch.no_grad():
        probs = module(x).softmax(-1)[0]
    assert result.target == int(probs.argmax()) and result.target_name == str(result.target)
    assert result.confidence == pytest.approx(float(probs.max()), abs=1e-6) and result.top[0][0] == result.target_name
    # Integrated Gradients adds up to the logit's change from a black image (the convergence delta).
    assert abs(result.convergence_delta) < 1e-2
    # Files: each picture, the JSON report (which names them), the same images in TensorBoard.
    folder = cnn_run.explain_dir
    assert folder == cnn_run.path / "reports" / "explain"
    assert sorted(p.name for p in folder.iterdir()) == ["test-3-attributions.png", "test-3.json"]
    assert (folder / "test-3-attributions.png").read_bytes() == result.pictures["attributions"]
    report = json.loads((folder / "test-3.json").read_text())
    assert report["target"] == result.target and report["maps"]["saliency"] == result.maps["saliency"]
    assert report["files"] == {"attributions": str(folder / "test-3-attributions.png")}
    assert _image_tags(cnn_run) == ["explain/test-3/attributions"]
    # Only the run's own curves are read as curves: the images' event file adds none.
    assert not any(tag.startswith("explain") for tag in runs.scalars(cnn_run))


def test_a_prompt_to_the_gpt_attention_logit_lens_and_tokens(gpt_run: runs.Run) -> None:
    text = "The pass statement"
    result = explain(gpt_run, text=text, methods=["integrated_gradients", "attention", "logit_lens"], write=False)
    tokens = result.input["tokens"]
    assert "".join(tokens) == text and result.input["text"] == text and result.label.startswith("text-")
    assert len(result.maps["integrated_gradients"]) == len(tokens) and "occlusion" not in result.maps
    assert result.attention.shape == (1, 2, len(tokens), len(tokens))  # 1 layer, 2 heads
    assert result.lens["layers"] == ["embeddings", "block 1"] and result.lens["final_matches_output"]
    assert result.lens["top"][-1][0][0] == result.top[0][0]  # the last layer reads what the model predicts
    assert set(result.pictures) == {"attributions", "attention", "logit-lens"} and not result.files
    assert not gpt_run.explain_dir.exists()  # write=False writes nothing


def test_explain_checks_and_the_cli(cnn_run: runs.Run, root: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["explain", cnn_run.name, "--input", "2", "--check", "--method", "integrated_gradients",
                 "--runs_dir", str(root)])
    out = capsys.readouterr().out
    report = json.loads((cnn_run.explain_dir / "test-2.json").read_text())
    checks = report["checks"]
    assert checks["samples"] == CHECK_SAMPLES and set(checks["deletion"]) == {"integrated_gradients"}
    assert code == (0 if checks["passed"] else 1)  # a failed check is exit code 1, as in lab doctor
    assert "completeness: PASS" in out or "completeness: FAIL" in out
    assert str(cnn_run.explain_dir / "test-2-checks.png") in out
    assert (cnn_run.explain_dir / "test-2-checks.png").stat().st_size > 10_000


@pytest.mark.parametrize("method", ["int8-dynamic", "prune-structured"])
def test_a_compressed_artifact_beside_its_original(cnn_run: runs.Run, method: str) -> None:
    from lab.compress import compress

    compress(cnn_run, method, max_batches=1, repeats=1, warmup=0, **({"steps": 0} if "prune" in method else {}))
    result = explain(cnn_run, index=0, compressed=method, methods=["occlusion"])
    c = result.compared
    assert c["artifact"] == method and c["method"] == "occlusion" and -1 <= c["rank_correlation"] <= 1
    assert torch.tensor(c["artifact_map"]).shape == torch.tensor(c["original_map"]).shape == (1, 8, 8)
    if method == "int8-dynamic":  # int8 weights in the head only: the same pixels matter, in the same order
        assert c["rank_correlation"] > 0.9 and c["same_prediction"]
    assert (cnn_run.explain_dir / f"test-0-vs-{method}.png").is_file()


def test_a_text_classifier_gets_token_heatmaps(root: Path) -> None:
    from lab.train import fit

    small = {**TINY, "trainer.max_steps": 12, "trainer.val_check_interval": 6, "model.n_layer": 1,
             "model.n_embd": 32, "model.n_head": 2}
    run = fit(load_config("sentiment", small), runs_root=root, progress=False)
    result = explain(run, text="a wonderful film", write=False)
    assert result.task == "classifier" and result.target_name in run.config["model"]["labels"]
    assert len(result.maps["integrated_gradients"]) == len("a wonderful film")  # a character tokenizer
    assert result.attention.shape[:2] == (1, 2) and result.lens is None
    sample = explain(run, index=0, methods=["occlusion"], write=False)
    assert "-1" not in sample.input["tokens"] and len(sample.maps["occlusion"]) == len(sample.input["tokens"])


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def no_method_family(cnn_run: runs.Run):
    """The CNN's family re-registered under another name with nothing to explain, and a copy of the run naming it."""
    register(dataclasses.replace(family("cnn"), name="opaque", explain=None))
    copy = cnn_run.path.parent.parent / "opaque" / cnn_run.run_id
    import shutil

    shutil.copytree(cnn_run.path, copy, ignore=shutil.ignore_patterns("reports"))
    config = json.loads(json.dumps(cnn_run.config))
    config["model"]["name"] = "opaque"
    import yaml

    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    yield f"opaque/{cnn_run.run_id}"
    unregister("opaque")
    shutil.rmtree(copy.parent)


def _refused(root: Path, call: Any, needle: str) -> str:
    before = _tree(root)
    with pytest.raises(LabError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and needle in message, message
    assert _tree(root) == before, "a refusal wrote something"
    return message


def test_bad_input_is_one_line_and_writes_nothing(cnn_run: runs.Run, gpt_run: runs.Run, root: Path,
                                                   no_method_family: str) -> None:
    n = load(cnn_run).test_size()
    _refused(root, lambda: explain(cnn_run, index=n), f"has {n} samples; give an index from 0 to {n - 1}")
    _refused(root, lambda: explain(cnn_run, index=-1), "index >= 0")
    _refused(root, lambda: explain(cnn_run, text="seven"), "give a test-sample index")
    _refused(root, lambda: explain(cnn_run, methods=["attention"]), "supports integrated_gradients, saliency, occlusion")
    _refused(root, lambda: explain(gpt_run, text="x" * 40), "40 tokens long but")
    _refused(root, lambda: explain(gpt_run, text="   "), "empty")
    _refused(root, lambda: explain(gpt_run, compressed="onnx"), "choose one of int8-dynamic")
    _refused(root, lambda: explain(gpt_run, compressed="prune"), "lab compress")
    message = _refused(root, lambda: explain(no_method_family, runs_root=root), "declares no explanation method")
    assert "gpt" in message and "cnn" in message  # which families do


@pytest.mark.slow
@pytest.mark.parametrize("preset, shape", [("digits-vit", (1, 8, 8)), ("speech-cnn", (1, 40, 41))])
def test_the_vit_and_the_speech_model_are_explained_over_their_image(root: Path, preset: str,
                                                                       shape: tuple[int, ...]) -> None:
    # The ViT on the digits and the keyword CNN on a spectrogram declare the image methods: each
    # map covers the whole input, and Integrated Gradients adds up to the logit's change.
    from lab.train import fit

    small = {"digits-vit": {"model.n_layer": 1}, "speech-cnn": {"model.channels": [4, 8], "model.hidden": 16}}[preset]
    run = fit(load_config(preset, {**TINY, "trainer.max_steps": 10, **small}), runs_root=root, progress=False)
    result = explain(run, index=0)
    assert result.inputs == "image" and set(result.maps) == {"integrated_gradients", "saliency", "occlusion"}
    assert all(torch.tensor(m).shape == shape for m in result.maps.values())
    assert abs(result.convergence_delta) < 1e-2 and (run.explain_dir / "test-0-attributions.png").is_file()
