"""The optimizer and learning-rate schedule: their config section, its checks, and the builders.

    from lab.optim import OptimizerConfig, build_optimizer, lr_lambda
    cfg = OptimizerConfig(lr=3e-4, warmup_steps=100)
    cfg.validate()                                       # ConfigError naming a bad field
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, max_steps=1000))

The ``optimizer:`` section of every config; ``lab.modules`` builds from it in
``configure_optimizers``, ``lab.plan`` counts its states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lab.errors import LabError, require

OPTIMIZERS = ("adamw", "sgd")
"""The optimizers a config may name (the planner counts their states)."""
SCHEDULES = ("cosine", "constant")
"""Learning-rate schedules after warm-up."""


@dataclass
class OptimizerConfig:
    """The optimizer and learning-rate schedule, built by ``lab.modules``."""

    name: str = "adamw"
    """adamw (decay on matrices only) or sgd."""
    lr: float = 1e-3
    """Peak learning rate (never rescaled silently with the batch size)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (AdamW) or L2 penalty (SGD)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates."""
    momentum: float = 0.9
    """SGD momentum."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to lr over this many steps."""
    schedule: str = "cosine"
    """After warm-up: cosine decay to min_lr_ratio * lr at max_steps, or constant."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine schedule)."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field, the value and the allowed range."""
        require(self.name in OPTIMIZERS, "optimizer.name", self.name, f"one of {', '.join(OPTIMIZERS)}")
        require(self.lr > 0, "optimizer.lr", self.lr, "a number > 0 (typical: 1e-4 to 1e-2 for AdamW)")
        require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "a number >= 0")
        require(all(0 <= b < 1 for b in self.betas), "optimizer.betas", list(self.betas), "two numbers in [0, 1)")
        require(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "a number in [0, 1)")
        require(self.warmup_steps >= 0, "optimizer.warmup_steps", self.warmup_steps, "a whole number >= 0")
        require(self.schedule in SCHEDULES, "optimizer.schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        require(0 <= self.min_lr_ratio <= 1, "optimizer.min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, device: torch.device,
                    precision: str = "32-true") -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases, norms), or SGD with momentum.

    Only trainable parameters are handed over: frozen ones (a LoRA base, ``lab.finetune``) get
    no optimizer state and no decay. LoRA's A and B are matrices, so they decay, which pulls the
    update B @ A towards zero, i.e. towards the pretrained model (as in Hu et al.'s GPT-2 runs).
    An empty group (no biases or norms train under LoRA) is left out.

    ``precision``: the Trainer's. Under ``*-mixed`` AdamW is not fused: a fused optimizer
    unscales gradients inside its own step, so Lightning cannot clip them before it (it
    refuses with "does not allow for gradient clipping"), and the configs clip by default.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LabError("the model has no trainable parameters (every one is frozen): nothing to optimize")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    # The fused kernel updates all tensors in one pass; on CPU it measured faster than the
    # foreach path too (benchmarks/train_throughput.py). Other devices keep the default.
    fused = device.type in ("cuda", "cpu") and not str(precision).endswith("-mixed")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def lr_lambda(cfg: OptimizerConfig, max_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step: linear warm-up, then cosine decay (or constant)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant" or max_steps <= cfg.warmup_steps:
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / (max_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
