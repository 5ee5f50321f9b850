"""The GPT text classifier: the model (lab.models.text_classifier) and its family (lab.families.text_classifier),
from pooling over padded texts to a pretrained backbone, fit, evaluate, compress and export."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lab import hub
from lab.checkpoints import load_checkpoint
from lab.config import load_config
from lab.data.labelled_text import PAD_ID
from lab.errors import ConfigError, LabError
from lab.families import build_datamodule, build_module, family
from lab.models.text_classifier import TextClassifier, TextClassifierConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32}
"""The backbone shape of conftest's ``tiny_gpt_run`` (a 1-layer, 32-wide gpt-nano)."""


def tiny_model(**changes) -> TextClassifier:
    torch.manual_seed(0)
    fields = dict(vocab_size=20, num_classes=3, n_layer=2, n_head=2, n_embd=32, block_size=16, head_dropout=0.0)
    return TextClassifier(TextClassifierConfig(**{**fields, **changes})).eval()


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_shapes(pooling: str) -> None:
    model = tiny_model(pooling=pooling)
    assert model(torch.randint(0, 20, (4, 16))).shape == (4, 3)
    assert model(torch.randint(0, 20, (1, 5))).shape == (1, 3)
    assert not hasattr(model.backbone.lm_head, "weight")  # no LM head: the classifier's own head decides
    assert model.num_params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_padding_changes_nothing(pooling: str) -> None:
    """A text gives the same logits alone, right-padded, and in a batch with a longer text."""
    model = tiny_model(pooling=pooling)
    short, long = torch.randint(0, 20, (1, 6)), torch.randint(0, 20, (1, 16))
    alone = model(short)
    padded = torch.cat([short, torch.full((1, 10), PAD_ID)], dim=1)
    batch = model(torch.cat([padded, long]))
    torch.testing.assert_close(model(padded), alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[:1], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[1:], model(long), rtol=0, atol=1e-5)


def test_the_pooling_reads_what_it_says() -> None:
    """``last``: the last real token's state; ``mean``: the mean of the real tokens' states."""
    ids = torch.tensor([[3, 7, 1, 9, PAD_ID, PAD_ID]])
    for pooling in ("last", "mean"):
        model = tiny_model(pooling=pooling)
        h = model.backbone(ids[:, :4])  # the hidden states of the real tokens alone
        pooled = h[:, -1] if pooling == "last" else h.mean(1)
        torch.testing.assert_close(model(ids), model.head(pooled), rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides, field", [
    ({"model.pooling": "max"}, "model.pooling"),
    ({"model.head_dropout": 1.0}, "model.head_dropout"),
    ({"model.num_classes": 1}, "model.num_classes"),
    ({"model.labels": "[neg, neg]"}, "model.labels"),
    ({"model.labels": "[neg, pos]", "model.num_classes": 3}, "model.num_classes"),
    ({"model.n_head": 3}, "model.n_embd"),
    ({"model.activation": "relu"}, "model.activation"),
    ({"model.init_from": " "}, "model.init_from"),
])
def test_bad_settings_are_refused_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config("sentiment", overrides)
    assert e.value.field == field


def test_the_family_record() -> None:
    fam = family("gpt-classifier")
    assert (fam.task, fam.metric, fam.mode, fam.data) == ("classifier", "val/accuracy", "max", ("labelled-text",))
    assert fam.tokenized and fam.pretrained is not None and fam.structure is not None
    cfg = load_config("sentiment")
    x, y = fam.example(fam.plan_shape(cfg)[0], 3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 64) and y.shape == (3,) and int(y.max()) < 2


def test_the_data_fills_in_vocabulary_labels_and_class_count() -> None:
    cfg = load_config("sentiment")
    dm = build_datamodule(cfg)
    dm.setup("fit")
    model = build_module(cfg, dm).model
    c = model.config
    assert (c.vocab_size, c.labels, c.num_classes) == (dm.vocab_size, ("negative", "positive"), 2)
    with pytest.raises(ConfigError, match="model.num_classes = 3"):
        build_module(load_config("sentiment", {"model.num_classes": 3}), dm)


# --------------------------------------------------------------------------- a pretrained backbone


def test_the_backbone_loads_a_lab_gpt_run_bitwise(tiny_gpt_run) -> None:
    cfg = load_config("sentiment", {**TINY, "model.init_from": str(tiny_gpt_run.path)})
    dm = build_datamodule(cfg)
    dm.setup("fit")
    pre = hub.load_pretrained(str(tiny_gpt_run.path))
    assert dm.tokenizer.decode(list(range(dm.vocab_size))) == pre.tokenizer.decode(list(range(pre.tokenizer.vocab_size)))
    model = build_module(cfg, dm).model
    saved = load_checkpoint(tiny_gpt_run.checkpoint("best"))["state_dict"]
    mine = model.backbone.state_dict()
    assert set(mine) == {k.removeprefix("model.") for k in saved if k != "model.lm_head.weight"}
    for name, tensor in mine.items():
        assert torch.equal(tensor, saved[f"model.{name}"]), name
    # A fresh head: the pretrained model has none to give.
    assert not model.head.bias.detach().any()


def test_a_shorter_context_takes_the_first_positions(tiny_gpt_run) -> None:
    cfg = load_config("sentiment", {**TINY, "model.block_size": 16, "model.init_from": str(tiny_gpt_run.path)})
    dm = build_datamodule(cfg)
    dm.setup("fit")
    wpe = build_module(cfg, dm).model.backbone.transformer.wpe.weight
    saved = load_checkpoint(tiny_gpt_run.checkpoint("best"))["state_dict"]["model.transformer.wpe.weight"]
    assert torch.equal(wpe, saved[:16]) and dm.datasets["train"].tensors[0].shape[1] <= 16


@pytest.mark.parametrize("change, match", [
    ({"model.n_embd": 64}, r"transformer.wte.weight is \[\d+, 32\] there but \[\d+, 64\]"),
    ({"model.n_head": 4}, "model.n_head is 2 there but 4"),
])
def test_a_backbone_of_another_shape_is_refused(tiny_gpt_run, change: dict, match: str) -> None:
    cfg = load_config("sentiment", {**TINY, **change, "model.init_from": str(tiny_gpt_run.path)})
    dm = build_datamodule(cfg)
    dm.setup("fit")
    with pytest.raises(LabError, match=match):
        build_module(cfg, dm)


# --------------------------------------------------------------------------- through the lab


SMALL = {**TINY, "model.init_from": None, "trainer.max_steps": 12, "trainer.val_check_interval": 6,
         "trainer.limit_val_batches": 2, "optimizer.warmup_steps": 2}


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory: pytest.TempPathFactory):
    from lab.train import fit

    return fit(load_config("sentiment", SMALL), runs_root=tmp_path_factory.mktemp("runs"), progress=False)


@pytest.mark.slow
def test_fit_records_what_the_data_decided(sentiment_run) -> None:
    assert sentiment_run.status == "completed"
    model = yaml.safe_load((sentiment_run.path / "config.yaml").read_text())["model"]
    assert model["labels"] == ["negative", "positive"] and model["num_classes"] == 2 and model["vocab_size"] > 26
    assert {"test/accuracy", "test/macro_f1"} <= set(sentiment_run.summary["test"])


@pytest.mark.slow
def test_evaluate_reports_accuracy_macro_f1_and_a_named_confusion_matrix(sentiment_run) -> None:
    from lab.evaluate import evaluate

    q = evaluate(sentiment_run, repeats=1, warmup=0)["quality"]
    assert q["class_names"] == ["negative", "positive"]
    cm = torch.tensor(q["confusion_matrix"])
    assert cm.shape == (2, 2) and int(cm.sum()) == q["samples"] == 800 and cm.sum(1).tolist() == [400, 400]
    assert q["accuracy"] == pytest.approx(float(cm.diag().sum()) / 800)
    f1 = [2 * cm[i, i] / (cm[i].sum() + cm[:, i].sum()) for i in range(2)]
    assert q["macro_f1"] == pytest.approx(float(sum(f1)) / 2)
    assert (sentiment_run.path / "reports" / "confusion-best.png").is_file()


@pytest.mark.slow
def test_int8_onnx_and_pruning_agree_with_the_float_model(sentiment_run) -> None:
    from lab.compress import compress

    tolerance = {"int8-dynamic": 0.05, "onnx": 1e-4}  # on the test loss; int8 rounds, ONNX only reorders sums
    for method, tol in tolerance.items():
        r = compress(sentiment_run, method, repeats=1, warmup=0)
        original = json.loads(sentiment_run.eval_report("best").read_text())["quality"]
        assert abs(r["quality"]["loss"] - original["loss"]) <= tol, method
        assert abs(r["deltas"]["quality_delta"]) <= 0.05 and r["quality"]["class_names"] == ["negative", "positive"]
    assert r["notes"]["parity"]["passed"]
    pruned = compress(sentiment_run, "prune", repeats=1, warmup=0, steps=2, sparsity=0.5)
    assert pruned["notes"]["sparsity"] == pytest.approx(0.5, abs=0.01) and pruned["notes"]["prunable_layers"] == 5


@pytest.mark.slow
def test_onnx_export_matches_the_model_on_padded_texts(sentiment_run) -> None:
    from lab.compress.onnx import predictor, session
    from lab.evaluate import load_checked, load_data, run_config
    from lab.export import export

    folder = export(sentiment_run, "onnx")
    assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["labels"] == ["negative", "positive"]
    assert (folder / "tokenizer.json").is_file() and "tok.encode" in (folder / "README.md").read_text()
    module = load_checked(sentiment_run, "best")
    dm = load_data(run_config(sentiment_run), "test", module)
    x = next(iter(dm.test_dataloader()))[0]
    assert (x == PAD_ID).any()  # a batch with padding
    predict = predictor(session(folder / "model.onnx"))
    with torch.inference_mode():
        torch.testing.assert_close(predict(x), module.model(x), rtol=0, atol=1e-4)
        one = x[:1, : int((x[0] != PAD_ID).sum())]  # one text, unpadded: another sequence length
        torch.testing.assert_close(predict(one), module.model(one), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_the_export_readme_example_classifies_a_text(sentiment_run, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    from lab.export import export

    folder = export(sentiment_run, "safetensors")
    code = (folder / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(folder)  # the example names its files relative to the folder, as a user runs it
    exec(compile(code, str(folder / "README.md"), "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip() in ("tensor([0])", "tensor([1])")  # one text, one class id


@pytest.mark.slow
def test_the_run_page_shows_its_accuracy_macro_f1_and_confusion_matrix(sentiment_run, dashboard_page) -> None:
    from lab.evaluate import evaluate

    q = evaluate(sentiment_run, repeats=1, warmup=0)["quality"]
    at = dashboard_page(sentiment_run.path.parents[1], "run.py", run=sentiment_run.name)
    assert not at.exception
    figures = next(d.value for d in at.dataframe if "figure" in d.value.columns)
    shown = dict(zip(figures["figure"], figures["value"]))
    assert float(shown["test/accuracy"]) == pytest.approx(q["accuracy"], rel=1e-5)
    assert float(shown["test/macro_f1"]) == pytest.approx(q["macro_f1"], rel=1e-5)
    assert len(at.get("image")) >= 1  # the confusion matrix picture

@pytest.mark.slow
def test_the_panel_and_the_planner_take_the_preset() -> None:
    from lab.widgets.mapping import assess, state_from_config

    state = state_from_config("sentiment")
    assert (state["n_layer"], state["n_head"], state["block_size"], state["hidden"]) == (4, 4, 64, None)
    a = assess({**state, "n_layer": 2}, device="cpu")
    cfg = load_config("sentiment", {"model.n_layer": 2})
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert a.ok and a.params == build_module(cfg, dm).model.num_params()
