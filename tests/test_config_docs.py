"""Field docstrings from the dataclasses: the one source of help, --print_config comments and tooltips."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from lab.config import TrainerConfig, list_presets, load_config
from lab.config_docs import commented_yaml, field_docs, fields_help, section_docs


def test_field_docs_are_the_docstrings_under_each_field() -> None:
    docs = field_docs(TrainerConfig)
    assert docs["max_steps"].startswith("Optimizer steps to run")
    assert "bf16-mixed" in docs["precision"]  # the allowed values are part of the text


@pytest.mark.parametrize("preset", list_presets())
def test_every_field_of_every_preset_is_documented(preset: str) -> None:
    cfg = load_config(preset)
    docs = section_docs(cfg)
    missing = [f"{section}.{f.name}" for section in ("model", "data", "trainer", "optimizer")
               for f in dataclasses.fields(getattr(cfg, section)) if f"{section}.{f.name}" not in docs]
    assert not missing, f"fields without a docstring: {missing}"


def test_print_config_comments_keep_the_yaml_equal_to_the_config() -> None:
    cfg = load_config("digits-cnn", {"trainer.max_steps": 7})
    text = commented_yaml(cfg)
    assert yaml.safe_load(text) == cfg.to_dict()  # comments only: the same config reads back
    assert "# Optimizer steps to run" in text and "max_steps: 7" in text
    help_text = fields_help(cfg)
    assert "--trainer.max_steps (7): Optimizer steps to run" in help_text
    assert "--model.channels" in help_text and "--model.n_head" not in help_text
