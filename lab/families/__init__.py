"""Model families: one record per family, and the one registry of them.

    from lab.families import FAMILIES, family, family_of, register
    fam = family("gpt")                      # the GPT family's record (lab/families/gpt.py)
    fam.task, fam.metric, fam.mode           # "lm", "val/loss", "min"
    model = fam.build(fam.config(vocab_size=65))
    build_module(cfg, dm)                    # the LightningModule for a whole Config, as its family builds it

A family is one module (``lab/families/<name>.py``, which defines its ``FAMILY`` record from
``lab.families.record``) plus one line below. Everything else in the lab asks the record what it needs to know -- which
data the model trains on, its task and metric, how to plan, compress, export and present it
-- and never compares a model's name. A test registers a family defined only inside the test
file and runs it through the whole workflow (tests/test_families.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from lab import finetune
from lab.data import DATAMODULES
from lab.errors import ConfigError
from lab.families import cnn, gpt, mlp, recommender, speech, text_classifier, vit
from lab.families.record import TASKS, ModelFamily, TransformerShape, replace_config

if TYPE_CHECKING:  # only for hints: lab.config imports this module
    from lab.config import Config
    from lab.modules import LabModule

FAMILIES: dict[str, ModelFamily] = {}
"""model.name -> its record. Filled below, one line per family."""


def register(fam: ModelFamily) -> ModelFamily:
    """Add (or replace) a family; returns it. A config can then name it as ``model.name``."""
    FAMILIES[fam.name] = fam
    return fam


def unregister(name: str) -> None:
    """Remove a family (tests that register a toy family clean up with this)."""
    FAMILIES.pop(name, None)


def family(name: Any) -> ModelFamily:
    """The record for ``model.name``; ConfigError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError("model.name", name, f"one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(cfg: Any) -> ModelFamily:
    """The record of a Config (or of a plain config mapping, as run folders hold it)."""
    if isinstance(cfg, dict):
        return family((cfg.get("model") or {}).get("name"))
    return family(cfg.model.name)


def build_model(config: Any) -> nn.Module:
    """The model a ``model:`` section names, built from it (ConfigError for an unknown name)."""
    return family(getattr(config, "name", None)).build(config)


def build_datamodule(cfg: "Config") -> Any:
    """The DataModule for ``cfg.data``, as the model's family builds it."""
    fam = family_of(cfg)
    if fam.datamodule is not None:
        return fam.datamodule(cfg)
    return DATAMODULES[cfg.data.name][1](cfg.data, seed=cfg.seed)


def build_module(cfg: "Config", dm: Any = None, *, pretrained: bool = True, runs_root: Any = None) -> "LabModule":
    """The model wrapped in its LightningModule, as the config says it starts and trains.

    In this order: the family builds the model (``dm`` completes what the data decides, a
    vocabulary); ``model.init_from``, when the config has one, loads the pretrained weights
    (``lab.hub.initialize``; a run name resolves under ``runs_root``); ``finetune`` freezes the
    base and adds LoRA adapters (``lab.finetune.apply``). Every path that builds a module -- fit,
    resume, checkpoint loading, the planner's measurement, the LR finder -- comes through here,
    so all see the same structure. ``pretrained=False`` skips the weights (what memory is
    measured on does not depend on them).
    """
    fam = family_of(cfg)
    model_cfg = fam.complete(cfg.model, dm) if fam.complete is not None else cfg.model
    model = fam.build(model_cfg)
    source = getattr(cfg.model, "init_from", None)
    if source and pretrained:
        from lab import hub  # here, not at the top: lab.hub reads lab runs, whose modules import this one

        hub.initialize(model, cfg, runs_root)
    finetune.apply(model, cfg.finetune, fam)
    module = fam.module(cfg, model, dm)
    # The frozen base can be rebuilt from init_from: checkpoints then keep only what trains.
    module.trainable_only = bool(source) and cfg.finetune.lora
    return module


register(gpt.FAMILY)
register(cnn.FAMILY)
register(vit.FAMILY)
register(mlp.FAMILY)
register(text_classifier.FAMILY)
register(speech.FAMILY)
register(recommender.FAMILY)

__all__ = ["FAMILIES", "TASKS", "ModelFamily", "TransformerShape", "build_datamodule", "build_model", "build_module",
           "family", "family_of", "register", "replace_config", "unregister"]
