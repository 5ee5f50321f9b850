"""The MLP family: the seed's regression network on tabular features, MSE loss.

    from lab.families.mlp import FAMILY
    FAMILY.check(cfg)                        # model.in_features must equal data.n_features
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lab.compress.structure import Group, Structure, neurons
from lab.errors import ConfigError
from lab.families.record import Explainable, ModelFamily, Servable
from lab.models.mlp import MLP, MLPConfig
from lab.modules import Regressor


def module(cfg: Any, model: Any, dm: Any) -> Regressor:
    return Regressor(model, cfg.optimizer, cfg.trainer.max_steps)


def example(c: MLPConfig, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, c.in_features, generator=gen), torch.randn(n, c.out_features, generator=gen)


def check(cfg: Any) -> None:
    if cfg.model.in_features != cfg.data.n_features:
        raise ConfigError("model.in_features", cfg.model.in_features,
                          f"data.n_features={cfg.data.n_features} (the model's input width must match the data)")


def hidden_groups(model: nn.Module) -> list[Group]:
    """The neurons of each hidden layer."""
    linears = [i for i, m in enumerate(model.net) if isinstance(m, nn.Linear)]
    return [neurons(model, f"net.{a}", f"net.{b}") for a, b in zip(linears, linears[1:])]


def hidden_shape(model: nn.Module, counts: list[int]) -> dict[str, Any]:
    model.config = dataclasses.replace(model.config, hidden=tuple(counts))
    return dataclasses.asdict(model.config)


def narrow(c: MLPConfig, scale: float) -> dict[str, Any]:
    return {"hidden": [max(1, round(h * scale)) for h in c.hidden]}


FAMILY = ModelFamily(
    name="mlp", config=MLPConfig, model=MLP, data=("regression",), task="regressor", module=module, example=example,
    loss=Regressor.loss, check=check, narrow=narrow, int8_static=True,
    structure=Structure(groups=hidden_groups, shape=hidden_shape),
    explain=Explainable(("integrated_gradients", "saliency", "occlusion"), "features"),
    serve=Servable("features", "numbers"),
    describe="An MLP regressor: features [batch, in_features] -> outputs [batch, out_features]",
)
