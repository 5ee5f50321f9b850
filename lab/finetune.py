"""Fine-tuning: train every weight (``full``) or only low-rank adapters (``lora``, Hu et al. 2021).

    from lab.finetune import FinetuneConfig, apply, merge, trainable_summary
    fc = FinetuneConfig(method="lora", rank=8, alpha=16, targets="both")
    fc.validate()                          # ConfigError naming a bad field
    apply(model, fc, family("gpt"))        # freezes the base, wraps the family's target Linears
    trainable_summary(model)               # (trainable, total) parameters, e.g. (73728, 878592)
    merge(model)                           # W + B @ A * alpha / rank, LoRA layers -> plain nn.Linear

The ``finetune:`` section of every config; ``lab.families.build_module`` applies it to every
model it builds (fit, resume, checkpoint loading, the planner, the LR finder), so all of them
see the same structure. Which Linears are "attention" and which "mlp" is the family's to say
(``ModelFamily.lora_targets``: module-name suffixes); a family without them refuses ``lora``.

Why the lab's own LoRA layer and not ``peft``: peft pulls transformers and accelerate into the
core install for ~40 lines of arithmetic, and it renames the wrapped weights
(``c_attn.base_layer.weight``), which would break pretrained state dicts, checkpoints and the
family hooks that address weights by name. ``LoRALinear`` keeps the base ``weight``/``bias``
under their own names and adds ``lora_A``/``lora_B``; ``tests/test_finetune.py`` checks that
it computes what peft's LoRA layer computes and merges to the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import ConfigError, require

METHODS = ("full", "lora")
"""``full``: every weight trains. ``lora``: the base is frozen, low-rank adapters train."""
KINDS = ("attention", "mlp")
"""The kinds of Linear a family may name for adapters (``ModelFamily.lora_targets``' keys)."""
TARGETS = (*KINDS, "both")
"""Which of the family's Linears get adapters."""


@dataclass
class FinetuneConfig:
    """How much of the model trains: all of it, or LoRA adapters on a frozen base."""

    method: str = "full"
    """full (every weight trains) or lora (base frozen; only low-rank adapters, and a new task head, train)."""
    rank: int = 8
    """LoRA rank r: each adapted Linear W [out, in] gets B [out, r] @ A [r, in]; more rank, more capacity."""
    alpha: float = 16.0
    """LoRA scaling: the update B @ A is multiplied by alpha / rank (keep alpha fixed when trying ranks)."""
    dropout: float = 0.0
    """Dropout on the adapter's input (LoRA's own regulariser; the base layer sees the input unchanged)."""
    targets: str = "attention"
    """Which Linears get adapters: attention (query/key/value and output projections), mlp, or both."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field, the value and the allowed range."""
        require(self.method in METHODS, "finetune.method", self.method, f"one of {', '.join(METHODS)}")
        require(self.rank >= 1, "finetune.rank", self.rank, "a whole number >= 1 (typical: 4 to 64)")
        require(self.alpha > 0, "finetune.alpha", self.alpha, "a number > 0 (typical: rank or 2 x rank)")
        require(0 <= self.dropout < 1, "finetune.dropout", self.dropout, "a number in [0, 1)")
        require(self.targets in TARGETS, "finetune.targets", self.targets, f"one of {', '.join(TARGETS)}")

    @property
    def lora(self) -> bool:
        return self.method == "lora"


class LoRALinear(nn.Linear):
    """``y = x W^T + b + dropout(x) A^T B^T * alpha / rank`` with W and b frozen.

    Keeps the wrapped layer's ``weight`` and ``bias`` Parameters themselves (same objects, same
    names), so a state dict of the plain model loads into it and back. A starts like peft's
    (Kaiming-uniform, a = sqrt(5), nn.Linear's own init) and B at zero: before training the
    layer computes exactly what the base layer does.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # nn.Linear.__init__ would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """What merging adds to ``weight``: ``B @ A * alpha / rank``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (the adapter folded into the weight)."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"


def _matches(name: str, suffixes: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def target_suffixes(fc: FinetuneConfig, family: Any) -> tuple[str, ...]:
    """The module-name suffixes ``fc.targets`` selects from the family's record."""
    table: dict[str, tuple[str, ...]] = dict(getattr(family, "lora_targets", None) or {})
    return tuple(s for kind in kinds(fc.targets) for s in table.get(kind, ()))


def kinds(targets: str) -> tuple[str, ...]:
    """The kinds a ``finetune.targets`` value adapts: ``both`` is every one of ``KINDS``."""
    return KINDS if targets == "both" else (targets,)


def check(fc: FinetuneConfig, family: Any) -> None:
    """Refuse ``lora`` for a family that names no target Linears for ``fc.targets`` (ConfigError, before any work)."""
    if fc.lora and not target_suffixes(fc, family):
        named = sorted(getattr(family, "lora_targets", None) or {})
        if named:
            raise ConfigError("finetune.targets", fc.targets, f"{' or '.join(named)} (the layers model.name="
                              f"{family.name} names for adapters)")
        raise ConfigError("finetune.method", fc.method, "full",
                          f"model.name={family.name} names no layers for LoRA adapters")


def apply(model: nn.Module, fc: FinetuneConfig, family: Any) -> nn.Module:
    """Make ``model`` what ``fc`` trains, in place; returns it.

    ``full``: nothing changes. ``lora``: every parameter is frozen, each Linear whose name ends
    with one of the family's target suffixes becomes a ``LoRALinear`` (its A and B train), and
    the family's ``lora_trainable`` modules (a new task head) stay trainable.
    """
    if not fc.lora:
        return model
    check(fc, family)
    suffixes = target_suffixes(fc, family)
    model.requires_grad_(False)
    targets = [(name, m) for name, m in model.named_modules()
               if _matches(name, suffixes) and type(m) is nn.Linear]  # exactly Linear: never wrap twice
    if not targets:
        raise ConfigError("finetune.targets", fc.targets,
                          f"a choice that finds Linear layers in this {family.name} model (none end with "
                          f"{', '.join(suffixes)})")
    for name, linear in targets:
        _replace(model, name, LoRALinear(linear, fc.rank, fc.alpha, fc.dropout))
    keep = tuple(getattr(family, "lora_trainable", ()) or ())
    for name, m in model.named_modules():
        if keep and _matches(name, keep):
            m.requires_grad_(True)
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA layers."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W + B @ A * alpha / rank``), in place; returns the model.

    Each ``LoRALinear`` becomes a plain ``nn.Linear``, so what is exported, compressed or
    evaluated is an ordinary model with the base model's layers and names. Parameters end up
    trainable again (a merged model is a plain model; nothing of it is an adapter any more).
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, layer in found:
        _replace(model, name, layer.merged())
    if found:
        model.requires_grad_(True)
    return model


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), each shared tensor once."""
    params = list(model.parameters())  # parameters() yields a tied tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
