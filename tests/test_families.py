"""The model-family record: one place per family, proved by a family that exists only in this file.

A toy family (a linear classifier of the digits, with its own config dataclass, model and
record) is registered here and driven through config validation, ``fit``, ``evaluate``, a
compression method, ``lab plan``, the dashboard's data layer and the widget panel's
assessment, with nothing under ``lab/`` knowing it. A second test fails if any module in
``lab/`` outside the families' own compares a model's name.
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from lab import dashboard_data, runs
from lab.cli import main
from lab.compress.structure import Structure, neurons
from lab.config import load_config, to_yaml
from lab.errors import ConfigError
from lab.families import FAMILIES, ModelFamily, family, register, unregister
from lab.families.cnn import images
from lab.modules import Classifier

LAB = Path(__file__).resolve().parents[1] / "lab"


# --------------------------------------------------------------------------- a family of this file only


@dataclass
class ToyConfig:
    """A linear classifier of small square images (the ``model:`` section with ``name: toy``)."""

    name: str = "toy"
    """Registry key."""
    image_size: int = 8
    """Height and width of the input images."""
    num_classes: int = 10
    """Classes to predict."""
    hidden: int = 16
    """Width of the one hidden layer."""

    def validate(self) -> None:
        if self.hidden < 1:
            raise ConfigError("model.hidden", self.hidden, "a whole number >= 1")


class Toy(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(config.image_size ** 2, config.hidden), nn.ReLU(),
                                 nn.Linear(config.hidden, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


TOY = ModelFamily(
    name="toy", config=ToyConfig, model=Toy, data=("digits",), task="classifier",
    module=lambda cfg, model, dm: Classifier(model, cfg.optimizer, cfg.trainer.max_steps,
                                             num_classes=cfg.model.num_classes),
    example=images, loss=Classifier.loss, metric="val/accuracy", mode="max",
    narrow=lambda c, scale: {"hidden": max(1, round(c.hidden * scale))},
    structure=Structure(groups=lambda m: [neurons(m, "net.1", "net.3")],
                        shape=lambda m, counts: {**dataclasses.asdict(m.config), "hidden": counts[0]}),
    describe="A toy classifier: images [batch, 1, 8, 8] -> logits [batch, 10]",
)


@pytest.fixture
def toy() -> ModelFamily:
    register(TOY)
    yield TOY
    unregister("toy")


TOY_RUN = {"model.name": "toy", "data.name": "digits", "experiment": "toy", "trainer.max_steps": 20,
           "trainer.val_check_interval": 10, "trainer.limit_val_batches": 2, "optimizer.warmup_steps": 2}


def test_a_family_defined_in_a_test_runs_through_the_whole_lab(toy: ModelFamily, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    from lab.compress import compress
    from lab.evaluate import evaluate
    from lab.train import fit
    from lab.widgets.mapping import assess, state_from_config

    # Config: the family's own dataclass reads and validates the section; its data is the default.
    cfg = load_config(None, {"model.name": "toy"})
    assert isinstance(cfg.model, ToyConfig) and cfg.data.name == "digits"
    assert "name: toy" in to_yaml(cfg)
    with pytest.raises(ConfigError, match="model.hidden"):
        load_config(None, {"model.name": "toy", "model.hidden": 0})
    with pytest.raises(ConfigError, match="data.name"):
        load_config(None, {"model.name": "toy", "data.name": "text"})

    # fit -> evaluate -> compress, and the CLI's view of the run.
    root = tmp_path / "runs"
    run = fit(load_config(None, TOY_RUN), runs_root=root, progress=False)
    assert run.status == "completed" and run.summary["model"]["name"] == "toy"
    assert run.summary["model"]["params"] == sum(p.numel() for p in Toy(ToyConfig()).parameters())
    report = evaluate(run, max_batches=2, repeats=1)
    assert report["kind"] == "classifier" and 0 <= report["quality"]["accuracy"] <= 1
    result = compress(run, "int8-dynamic", max_batches=2, repeats=1)
    assert result["deltas"]["size_ratio"] < 1
    register(dataclasses.replace(TOY, int8_targets=()))  # the record decides what int8 quantizes
    untouched = compress(run, "int8-dynamic", max_batches=2, repeats=1)
    assert untouched["deltas"]["size_ratio"] > result["deltas"]["size_ratio"] and "Linear" not in untouched["notes"]["quantized"]
    register(TOY)
    pruned = compress(run, "prune-structured", max_batches=2, repeats=1, steps=2)
    assert pruned["deltas"]["size_ratio"] < 1  # the structure the family gives: "hidden" neurons
    assert main(["runs", "--runs_dir", str(root)]) == 0 and run.name in capsys.readouterr().out

    # lab plan: traced like any family without a transformer shape.
    from lab.plan import plan

    p = plan(load_config(None, TOY_RUN), device="cpu", with_recommendation=False)
    assert p.model.params == run.summary["model"]["params"] and p.memory.total > 0 and p.flops_per_unit > 0

    # The dashboard's data layer and the widget panel's assessment.
    (row,) = dashboard_data.runs_table(root)
    assert row["model"] == "toy" and row["status"] == "completed"
    assert dashboard_data.tokens_per_step(runs.load_run(run.path)) == (64, "samples")
    toy_yaml = tmp_path / "toy.yaml"  # the panel starts from a preset or a config file, as `lab fit` does
    toy_yaml.write_text(to_yaml(load_config(None, TOY_RUN)))
    state = state_from_config(str(toy_yaml))
    assert state["hidden"] == 16 and state["n_head"] is None  # the toy's own fields, none of the GPT's
    a = assess({**state, "hidden": 32}, device="cpu")
    assert a.ok and a.config.model.hidden == 32 and a.params == sum(p.numel() for p in Toy(ToyConfig(hidden=32)).parameters())
    assert family("toy") is toy and "toy" in FAMILIES


def test_the_registry_refuses_unknown_families_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="model.name.*gpt.*cnn"):
        family("nope")


# --------------------------------------------------------------------------- nothing else tests a name


def _names_compared(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines where a model name is compared (==, !=, in) or keys a dict literal."""
    def literal(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(literal(o) & names for o in operands):
                lines.append(node.lineno)
        elif isinstance(node, ast.Dict) and any(k is not None and literal(k) & names for k in node.keys):
            lines.append(node.lineno)
    return lines


def test_no_module_outside_the_families_compares_a_model_name() -> None:
    names = set(FAMILIES)
    found = []
    for path in sorted(LAB.rglob("*.py")):
        if "families" in path.relative_to(LAB).parts:
            continue
        for line in _names_compared(ast.parse(path.read_text(encoding="utf-8")), names):
            found.append(f"{path.relative_to(LAB.parent)}:{line}")
    assert not found, "ask the family record instead of testing a model's name: " + ", ".join(found)


def test_the_name_check_catches_what_it_should() -> None:
    code = 'a = m.name == "gpt"\nb = name in ("cnn", "x")\nc = {"mlp": 1}\nd = m.name == "other"\n'
    assert _names_compared(ast.parse(code), {"gpt", "cnn", "mlp"}) == [1, 2, 3]
