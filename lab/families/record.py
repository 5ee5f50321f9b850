"""The model-family record: what the lab needs to know about one kind of model.

    from lab.families.record import ModelFamily, TransformerShape
    FAMILY = ModelFamily(name="gpt", config=GPTConfig, model=GPT, data=("text",), task="lm", ...)

Each family module (``lab/families/<name>.py``) builds its ``FAMILY`` from this; the registry
in ``lab.families`` collects them. This module imports none of them, so imports flow one way:
record <- family modules <- registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

if TYPE_CHECKING:  # only for hints: lab.config imports the registry
    from lab.config import Config
    from lab.modules import LabModule

TASKS = ("lm", "classifier", "regressor", "ranking")
"""Task kinds: what the model predicts. Each picks an evaluation routine in ``lab.evaluate``."""

EXPLAIN_METHODS = ("integrated_gradients", "saliency", "occlusion", "attention", "logit_lens")
"""What ``lab explain`` can show (``lab.explain``): three attribution methods (through Captum), the
attention weights of each block and head, and the logit lens of a language model."""
EXPLAIN_INPUTS = ("image", "features", "tokens")
"""What an attribution map covers: pixels, a row of input features, or the tokens of a text."""


@dataclass(frozen=True)
class Explainable:
    """What ``lab explain`` shows for a family, and where in its model it looks."""

    methods: tuple[str, ...]
    """Names from ``EXPLAIN_METHODS`` this family supports; the first attribution method is the one checked."""
    inputs: str
    """One of ``EXPLAIN_INPUTS``: what the attribution maps cover."""
    embedding: str = ""
    """``tokens`` only: dotted name of the token-embedding module (attributions integrate along its output)."""
    baseline: str = "mean"
    """The "absent" input attributions start from: ``mean`` (zeros as the model sees them: the training mean
    of standardised data), ``black`` (what 0 was before the DataModule standardised it with one scalar
    ``mean``/``std``: a black image). Tokens always start from a text of blanks."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in EXPLAIN_METHODS]
        if unknown or self.inputs not in EXPLAIN_INPUTS or (self.inputs == "tokens") != bool(self.embedding) \
                or self.baseline not in ("mean", "black"):
            raise ValueError(f"Explainable{(self.methods, self.inputs, self.embedding, self.baseline)}: methods from "
                             f"{EXPLAIN_METHODS}, inputs from {EXPLAIN_INPUTS}, an embedding for tokens only, "
                             "baseline mean or black")


SERVE_INPUTS = ("numbers", "text", "id")
"""What one sample of a ``/predict`` body is (``lab.serve.predict`` reads each kind)."""


@dataclass(frozen=True)
class Servable:
    """How ``lab serve``'s ``/predict`` reads one sample of this family from a JSON body.

    The reply follows the family's ``task``: a classifier's class and probabilities, a regressor's
    outputs, a ranking's top-k items. Language models (``task: lm``) are served through the
    OpenAI-compatible ``/v1/completions`` instead and need no record of this kind.
    """

    field: str
    """The body's key holding the sample (or a list of samples), e.g. ``image``, ``features``, ``text``, ``user``."""
    inputs: str
    """One of ``SERVE_INPUTS``: ``numbers`` -- a (nested or flat) list with the shape of one sample of the
    family's ``example``, as the model sees it (standardised as the DataModule does); ``text`` -- a string the
    run's tokenizer encodes; ``id`` -- a whole number in [0, the model config's ``bound`` field)."""
    pad: int = 0
    """``text``: the id that right-pads the shorter texts of a batch (one the model ignores)."""
    bound: str = ""
    """``id``: the model config field counting the valid ids (e.g. ``n_users``)."""
    png: bool = False
    """``numbers`` of an image family: the sample may also come as a base64 PNG (optionally a ``data:`` URL).
    It is converted to the sample's channels and size, scaled to 0..1 and standardised with the run's
    training mean and std, as the DataModule does with its own images (so bright ink on a dark ground)."""

    def __post_init__(self) -> None:
        if self.inputs not in SERVE_INPUTS or (self.inputs == "id") != bool(self.bound) or not self.field \
                or (self.png and self.inputs != "numbers"):
            raise ValueError(f"Servable{(self.field, self.inputs, self.bound)}: a field, inputs from {SERVE_INPUTS}, "
                             "a bound for id inputs only, png for numbers only")


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
    structure: Any = None
    """Structured pruning: which units may go and the pruned shape (``lab.compress.structure.Structure``);
    None = prune-structured refused for this family."""
    int8_targets: tuple[type[nn.Module], ...] = (nn.Linear,)
    """Module types ``int8-dynamic`` quantizes (int8 weights, activations quantized per batch)."""
    int8_static: bool = False
    """Whether the int8-static flow (PT2E + Inductor) was verified on this family."""
    pretrained: Callable[[nn.Module, Any], None] | None = None
    """Loads a pretrained GPT (``lab.hub.Pretrained``: its config, state dict and tokenizer) into a
    freshly built model of this family; raises LabError naming the tensor and both shapes on a
    mismatch. None = ``model.init_from`` is refused for this family."""
    lora_targets: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict, hash=False)
    """LoRA (``finetune.method: lora``): module-name suffixes of the Linears that get adapters, by kind --
    ``{"attention": (...), "mlp": (...)}``; ``finetune.targets`` picks a kind (or both). Empty = LoRA refused."""
    lora_trainable: tuple[str, ...] = ()
    """Module-name suffixes that keep training in full under LoRA (a task head the pretrained model lacks)."""
    export_formats: tuple[str, ...] = ("safetensors", "onnx", "torchscript")
    """Formats ``lab export`` writes for it."""
    explain: Explainable | None = None
    """What ``lab explain`` shows for it (attribution methods, attention, logit lens); None = refused."""
    serve: Servable | None = None
    """How ``lab serve``'s ``/predict`` reads a request; None = no ``/predict`` (a language model is served
    through ``/v1/completions``)."""
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


def replace_config(config: Any, **changes: Any) -> Any:
    """A copy of a model config with ``changes``: families never change the config they are given."""
    return dataclasses.replace(config, **changes)
