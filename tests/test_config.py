"""Config shape, presets, dotted overrides and every refused value."""

from __future__ import annotations

import pytest
import yaml

from lab.config import Config, from_dict, list_presets, load_config, parse_overrides, to_yaml
from lab.errors import ConfigError, LabError


def test_presets_exist_and_load() -> None:
    assert {"gpt-nano", "gpt-10m", "gpt2-124m", "digits-cnn", "seed-mlp"} <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        assert cfg.experiment == name


def test_default_preset_is_nanogpt_cpu_shape() -> None:
    m = load_config("gpt-nano").model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (4, 4, 128, 64)


def test_seed_mlp_is_10_20_1_with_sgd() -> None:
    cfg = load_config("seed-mlp")
    assert (cfg.model.in_features, tuple(cfg.model.hidden), cfg.model.out_features) == (10, (20,), 1)
    assert cfg.optimizer.name == "sgd" and cfg.data.name == "regression"


def test_dotted_overrides_are_typed() -> None:
    cfg = load_config("gpt-nano", ["--trainer.max_steps", "200", "--optimizer.lr=3e-4", "--model.bias", "true",
                                   "--optimizer.betas", "[0.8, 0.9]", "--trainer.gradient_clip_val", "null"])
    assert cfg.trainer.max_steps == 200 and cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.model.bias is True and cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.trainer.gradient_clip_val is None


def test_mapping_overrides_and_yaml_round_trip(tmp_path) -> None:
    cfg = load_config("digits-cnn", {"model.channels": [8, 8], "seed": 7})
    assert cfg.model.channels == (8, 8) and cfg.seed == 7
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


def test_switching_model_picks_matching_section() -> None:
    cfg = from_dict({"model": {"name": "mlp"}, "data": {"name": "regression"}})
    assert cfg.model.name == "mlp" and cfg.data.n_features == 10
    # data defaults to what the model trains on
    assert from_dict({"model": {"name": "vit"}}).data.name == "digits"


def test_parse_overrides_errors() -> None:
    with pytest.raises(LabError, match="needs a value"):
        parse_overrides(["--trainer.max_steps"])
    with pytest.raises(LabError, match="unexpected argument"):
        parse_overrides(["max_steps=3"])


REFUSED = [
    ({"optimizer.lr": 0}, "optimizer.lr"),
    ({"optimizer.lr": -1e-3}, "optimizer.lr"),
    ({"data.batch_size": 0}, "data.batch_size"),
    ({"model.n_embd": 130}, "model.n_embd"),
    ({"trainer.strategy": "ddp_magic"}, "trainer.strategy"),
    ({"trainer.precision": "8-true"}, "trainer.precision"),
    ({"optimizer.name": "lion"}, "optimizer.name"),
    ({"data.path": "/no/such/book.txt"}, "data.path"),
    ({"data.val_fraction": 0}, "data.val_fraction"),
    ({"data.val_fraction": 1.5}, "data.val_fraction"),
    ({"data.test_fraction": -0.1}, "data.test_fraction"),
    ({"data.val_fraction": 0.6, "data.test_fraction": 0.5}, "data.test_fraction"),
    ({"trainer.max_steps": 0}, "trainer.max_steps"),
    ({"trainer.max_steps": "many"}, "trainer.max_steps"),
    ({"model.dropout": 1.0}, "model.dropout"),
    ({"model.name": "resnet"}, "model.name"),
    ({"data.name": "digits"}, "data.name"),
    ({"data.tokenizer": "wordpiece"}, "data.tokenizer"),
    ({"data.url": "https://example.org/x.txt"}, "data.sha256"),
    ({"experiment": "../escape"}, "experiment"),
    ({"trainer.devices": 0}, "trainer.devices"),
    ({"trainer.bogus": 1}, "trainer.bogus"),
    ({"optimizer.betas": [0.9]}, "optimizer.betas"),
]


@pytest.mark.parametrize("overrides,field", REFUSED, ids=[f for _, f in REFUSED])
def test_invalid_values_are_refused_naming_the_field(overrides, field) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("gpt-nano", overrides)
    assert err.value.field == field
    assert field in str(err.value) and "expected" in str(err.value)


def test_unknown_preset_and_bad_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="a preset"):
        load_config("gpt-huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(LabError, match="not valid YAML"):
        load_config(bad)


def test_python_tags_in_yaml_are_refused(tmp_path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(LabError, match="not valid YAML"):
        load_config(evil)


def test_unknown_top_level_key(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"modle": {"n_layer": 2}}))
    with pytest.raises(ConfigError, match="modle"):
        load_config(path)


def test_config_defaults_are_valid() -> None:
    from lab.config import from_dict, validate

    cfg = Config()
    validate(cfg)  # raises ConfigError if any default is out of its own range
    assert cfg.model.name == "gpt" and cfg.data.name == "text"
    assert from_dict(cfg.to_dict()) == cfg  # the defaults survive a round trip through plain data
    broken = Config()
    broken.trainer.max_steps = 0
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        validate(broken)


def test_gpt_10m_preset_is_a_10m_gpt_on_the_bundled_characters() -> None:
    # The larger GPT of the compression goals ("at least 10M parameters"), counted with the
    # character vocabulary of the corpus it trains on by default.
    import dataclasses

    import torch

    from lab.data.text import bundled_corpus
    from lab.families import build_model

    cfg = load_config("gpt-10m")
    assert cfg.data.path is None and cfg.data.tokenizer == "char"
    vocab = len(set(bundled_corpus()))
    with torch.device("meta"):
        model = build_model(dataclasses.replace(cfg.model, vocab_size=vocab))
    assert model.num_params() >= 10_000_000
    assert model.num_params() > 10 * build_model(dataclasses.replace(load_config("gpt-nano").model,
                                                                      vocab_size=vocab)).num_params()
