"""The search space: fields and kinds from the config's own dataclasses, every end value checked before a trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.sweep_space import load_space, parse_space


@pytest.fixture(scope="module")
def gpt():
    return load_config("gpt-nano")


def test_kinds_come_from_the_fields_types_not_from_how_numbers_are_written(gpt) -> None:
    space = parse_space({
        "optimizer.lr": {"low": "1e-4", "high": 1e-2, "log": True},   # YAML reads 1e-4 as a string
        "optimizer.weight_decay": {"low": 0, "high": 1},              # whole numbers, float field
        "optimizer.warmup_steps": {"low": 0, "high": 100, "step": 25},
        "model.n_layer": {"low": 2.0, "high": 4},                     # 2.0 is a whole number
        "optimizer.schedule": ["cosine", "constant"],
        "optimizer.betas": [[0.9, 0.95], [0.9, 0.99]],                # a list-valued field
        "seed": [1, 2],
    }, gpt)
    kinds = {p.name: (p.kind, p.low, p.high) for p in space.params}
    assert kinds["optimizer.lr"] == ("float", 1e-4, 1e-2) and space.log_scaled("optimizer.lr")
    assert kinds["optimizer.weight_decay"] == ("float", 0.0, 1.0)
    assert kinds["optimizer.warmup_steps"][0] == "int" and kinds["model.n_layer"] == ("int", 2, 4)
    betas = next(p for p in space.params if p.name == "optimizer.betas")
    assert betas.choices == ("[0.9, 0.95]", "[0.9, 0.99]")  # Optuna stores text; the config reads a list back
    # What a trial suggests is what the config accepts, in the file's order.
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    overrides = space.suggest(trial)
    assert list(overrides) == list(space.names)
    cfg = load_config("gpt-nano", overrides)
    assert 1e-4 <= cfg.optimizer.lr <= 1e-2 and cfg.optimizer.warmup_steps % 25 == 0
    assert cfg.optimizer.betas in ((0.9, 0.95), (0.9, 0.99)) and cfg.seed in (1, 2)
    # The spec reads back to the same space (what a study records and a worker rebuilds).
    assert parse_space(space.spec(), gpt) == space


@pytest.mark.parametrize("raw,needle", [
    ({"optimizer.lrr": {"low": 1e-4, "high": 1e-2}}, "optimizer.lrr"),                   # unknown field
    ({"optimizer.lr": {"low": 1e-2, "high": 1e-4}}, "low < high"),                       # empty range
    ({"optimizer.lr": {"low": 1e-3, "high": 1e-3}}, "low < high"),                       # a single point
    ({"model.n_layer": {"low": 1.5, "high": 4}}, "whole number"),                         # wrong type
    ({"optimizer.lr": {"low": "fast", "high": 1e-2}}, "a number"),                        # wrong type
    ({"optimizer.schedule": {"low": 1, "high": 2}}, "optimizer.schedule"),                # no range for a string
    ({"optimizer.lr": {"low": -1, "high": 1e-2}}, "> 0"),                                # a value the field refuses
    ({"model.dropout": {"low": 0.0, "high": 1.0}}, "model.dropout"),                     # the top end refused
    ({"optimizer.schedule": ["cosine", "linear"]}, "optimizer.schedule"),                 # a choice refused
    ({"optimizer.lr": {"low": 0.0, "high": 1e-2, "log": True}}, "log"),
    ({"optimizer.lr": {"low": 1e-4, "high": 1e-2, "lg": True}}, "lg"),                    # a typo in the range
    ({"optimizer.lr": {"low": 1e-4}}, "high"),
    ({"optimizer.warmup_steps": {"low": 0, "high": 100, "step": 30}}, "step"),
    ({"optimizer.warmup_steps": {"low": 0, "high": 100, "step": 2.5}}, "step"),
    ({"optimizer.lr": []}, "non-empty"),
    ({"optimizer.lr": [1e-3, 1e-3]}, "different"),
    ({"optimizer.lr": "1e-3"}, "range"),
    ({"model.name": ["gpt", "cnn"]}, "model.name"),
    ({"experiment": ["a", "b"]}, "experiment"),
    ({"lr": {"low": 1e-4, "high": 1e-2}}, "dotted"),
    ({"trainer.max_steps.x": [1, 2]}, "trainer"),
    ({"model.n_head": [3, 5]}, "n_head"),                                                  # 128 wide: neither divides
    ({}, "empty"),
])
def test_bad_spaces_are_refused_in_one_line(gpt, raw, needle: str) -> None:
    with pytest.raises(LabError) as e:
        parse_space(raw, gpt)
    message = str(e.value)
    assert needle in message and "\n" not in message, message


def test_a_value_valid_only_beside_another_swept_value_is_accepted(gpt) -> None:
    # n_head 3 needs n_embd 96 (the base has 128): each is checked beside the other's values.
    space = parse_space({"model.n_embd": [96, 128], "model.n_head": [3, 4]}, gpt)
    assert space.names == ("model.n_embd", "model.n_head")
    with pytest.raises(ConfigError, match="n_head"):
        parse_space({"model.n_embd": [128, 256], "model.n_head": [3, 4]}, gpt)  # 3 divides neither


def test_space_files(tmp_path: Path, gpt) -> None:
    good = tmp_path / "lr.yaml"
    good.write_text("# learning rate and schedule\noptimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                    "optimizer.schedule: [cosine, constant]\n")
    assert load_space(good, gpt).names == ("optimizer.lr", "optimizer.schedule")
    cases = {"missing.yaml": "does not exist", "empty.yaml": "is empty", "list.yaml": "mapping",
             "bad.yaml": "not valid YAML", "tag.yaml": "never run"}
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    (tmp_path / "list.yaml").write_text("- optimizer.lr\n")
    (tmp_path / "bad.yaml").write_text("optimizer.lr: {low: 1\n")
    (tmp_path / "tag.yaml").write_text("optimizer.lr: !!python/object/apply:os.system ['echo pwned']\n")
    for name, needle in cases.items():
        with pytest.raises(LabError, match=needle):
            load_space(tmp_path / name, gpt)
    with pytest.raises(LabError, match="is a folder"):
        load_space(tmp_path, gpt)


def test_fields_follow_the_configs_family() -> None:
    cnn = load_config("digits-cnn")
    space = parse_space({"model.channels": [[8, 16], [16, 32]], "model.dropout": {"low": 0.0, "high": 0.3}}, cnn)
    assert space.params[0].choices == ("[8, 16]", "[16, 32]")
    with pytest.raises(ConfigError, match="a field of model"):
        parse_space({"model.n_embd": [32, 64]}, cnn)  # a GPT field, not the CNN's
