"""Model families: one record per family, and the one registry of them.

    from lab.families import FAMILIES, family, family_of, register
    fam = family("gpt")                      # the GPT family's record (lab/families/gpt.py)
    fam.task, fam.metric, fam.mode           # "lm", "val/loss", "min"
    model = fam.build(fam.config(vocab_size=65))
    family_of(cfg).module(cfg, dm)           # the LightningModule for a whole Config

A family is one module (``lab/families/<name>.py``, which defines its ``FAMILY`` record) plus
one line below. Everything else in the lab asks the record what it needs to know -- which
data the model trains on, its task and metric, how to plan, compress, export and present it
-- and never compares a model's name. A test registers a family defined only inside the test
file and runs it through the whole workflow (tests/test_families.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from lab.data import DATAMODULES
from lab.errors import ConfigError

if TYPE_CHECKING:  # only for hints: lab.config imports this module
    from lab.config import Config
    from lab.modules import LabModule

TASKS = ("lm", "classifier", "regressor")
"""Task kinds: what the model predicts. Each picks an evaluation routine in ``lab.evaluate``."""


@dataclass(frozen=True)
class TransformerShape:
    """What the planner's transformer formulas need (Korthikanti et al.; Kaplan et al.'s 6N)."""

    n_layer: int
    """Blocks."""
    n_embd: int
    """Residual width."""
    n_head: int
    """Attention heads per block."""
    seq_len: int
    """Tokens per sample."""
    vocab: int
    """Output classes per token (the vocabulary)."""
    dropout: float
    """Dropout probability (dropout masks are saved activations too)."""


@dataclass(frozen=True)
class ModelFamily:
    """Everything the lab needs to know about one kind of model."""

    name: str
    """``model.name`` in configs; the registry key."""
    config: type
    """The ``model:`` section's dataclass; its ``validate()`` raises ConfigError for bad values."""
    model: type[nn.Module]
    """The pure-PyTorch model, built as ``model(config)``."""
    data: tuple[str, ...]
    """``data.name`` values it trains on (keys of ``lab.data.DATAMODULES``); the first is the default."""
    task: str
    """One of ``TASKS``: picks the evaluation routine, the export's signature and the dashboard's figures."""
    module: Callable[["Config", nn.Module, Any], "LabModule"]
    """The LightningModule around a built model: ``module(cfg, model, datamodule_or_None)``."""
    example: Callable[[Any, int, torch.Generator | None], tuple[torch.Tensor, torch.Tensor]]
    """A random ``(inputs, targets)`` batch of ``n`` samples for a model config (planner traces, measurements)."""
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """The training loss of ``(model(inputs), targets)`` (the planner traces a training step with it)."""
    metric: str = "val/loss"
    """The primary metric, a logged key (best checkpoint, sweeps, comparisons)."""
    mode: str = "min"
    """Whether the primary metric is better ``min`` or ``max``."""
    unit: str = "samples"
    """What throughput and the planner count: ``samples``, or ``tokens`` for sequence models."""
    tokenized: bool = False
    """Reads text through the run's tokenizer: vocabulary size from it, samples decoded with it."""
    datamodule: Callable[["Config"], Any] | None = None
    """Builds the DataModule for a Config; None = ``DATAMODULES[data.name](cfg.data, seed=cfg.seed)``."""
    complete: Callable[[Any, Any], Any] | None = None
    """Fills in what the data decides (the GPT's vocabulary) -> a new model config: ``complete(model_cfg, dm)``."""
    check: Callable[["Config"], None] | None = None
    """Checks across sections (the model against its data); raises ConfigError."""
    blocks: tuple[type[nn.Module], ...] = ()
    """Module classes that FSDP wraps one by one and activation checkpointing recomputes; () = neither."""
    transformer: Callable[[Any], TransformerShape] | None = None
    """The planner's analytic hook: the model's transformer shape. None = the planner traces a step."""
    plan_shape: Callable[["Config"], tuple[Any, str | None]] | None = None
    """Completes the model config for planning without data (e.g. its vocabulary): -> (config, note or None)."""
    narrow: Callable[[Any, float], dict[str, Any]] | None = None
    """Distillation: model overrides for a student about ``scale`` times as wide; None = not derivable."""
    int8_static: bool = False
    """Whether the int8-static flow (PT2E + Inductor) was verified on this family."""
    export_formats: tuple[str, ...] = ("safetensors", "onnx", "torchscript")
    """Formats ``lab export`` writes for it."""
    describe: str = ""
    """One line for an export's README: what goes in and what comes out. (The panel shows the
    controls whose fields the config dataclass has; the dashboard counts ``unit`` and ranks by ``metric``.)"""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"family {self.name}: task must be one of {TASKS}, got {self.task!r}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"family {self.name}: mode must be min or max, got {self.mode!r}")

    def build(self, config: Any) -> nn.Module:
        """The model for a ``model:`` section of this family."""
        return self.model(config)

    def default_config(self) -> Any:
        return self.config()


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


def replace_config(config: Any, **changes: Any) -> Any:
    """A copy of a model config with ``changes``: families never change the config they are given."""
    return dataclasses.replace(config, **changes)


def build_datamodule(cfg: "Config") -> Any:
    """The DataModule for ``cfg.data``, as the model's family builds it."""
    fam = family_of(cfg)
    if fam.datamodule is not None:
        return fam.datamodule(cfg)
    return DATAMODULES[cfg.data.name][1](cfg.data, seed=cfg.seed)


def build_module(cfg: "Config", dm: Any = None) -> "LabModule":
    """The model wrapped in its LightningModule; ``dm`` completes what the data decides (a vocabulary)."""
    fam = family_of(cfg)
    model_cfg = fam.complete(cfg.model, dm) if fam.complete is not None else cfg.model
    return fam.module(cfg, fam.build(model_cfg), dm)


from lab.families import cnn, gpt, mlp, vit  # noqa: E402  (each defines FAMILY; they import the record above)

register(gpt.FAMILY)
register(cnn.FAMILY)
register(vit.FAMILY)
register(mlp.FAMILY)
