"""A fully connected network for tabular regression: the lab's seed example.

    import torch
    from lab.models.mlp import MLP, MLPConfig
    model = MLP(MLPConfig())                # 10 -> 20 -> 1 with ReLU: 241 parameters
    y = model(torch.randn(32, 10))          # [32, 1]; train it with MSE and SGD
    MLP(MLPConfig(hidden=[64, 64], activation="tanh"))

This is only the model; the loss and optimizer live in ``lab.modules``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lab.errors import require, require_positive

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
"""Allowed values of ``MLPConfig.activation``."""


@dataclass
class MLPConfig:
    """Shape of the MLP (the ``model:`` section of a config with ``name: mlp``)."""

    name: str = "mlp"
    """Registry key; selects MLP."""
    in_features: int = 10
    """Input features per sample."""
    hidden: tuple[int, ...] = (20,)
    """Width of each hidden layer (a list of at least one width)."""
    out_features: int = 1
    """Outputs per sample (1 for a scalar regression target)."""
    activation: str = "relu"
    """Non-linearity between layers: relu, gelu or tanh."""

    def __post_init__(self) -> None:
        # YAML gives lists; a tuple keeps the config hashable and its type honest.
        self.hidden = tuple(self.hidden)

    def validate(self) -> None:
        """Refuse a shape that cannot be built, naming the field and what is allowed."""
        require_positive("model", self, "in_features", "hidden", "out_features")
        require(self.activation in ACTIVATIONS, "model.activation", self.activation,
                f"one of {', '.join(ACTIVATIONS)}")


class MLP(nn.Module):
    """Linear layers with the activation between them (none after the last: raw outputs)."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        config.validate()
        widths = [config.in_features, *config.hidden, config.out_features]
        self.config = config
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(ACTIVATIONS[config.activation]())
            layers.append(nn.Linear(n_in, n_out))
        self.net = nn.Sequential(*layers)

    def num_params(self) -> int:
        """Trainable parameter count (weights and biases of every layer)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B, in_features]`` -> outputs ``[B, out_features]``."""
        return self.net(x)
