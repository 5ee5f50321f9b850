"""Pure-PyTorch models, picked by name from a registry (no Lightning in here).

    from lab.models import MODELS, CNNConfig, GPTConfig, MLPConfig, ViTConfig, build_model
    model = build_model(GPTConfig(vocab_size=65))        # a GPT, an nn.Module
    build_model(CNNConfig()), build_model(ViTConfig()), build_model(MLPConfig())
    config_cls, model_cls = MODELS["vit"]                # what lab.config uses to read YAML

``config.name`` chooses the class; the registry is the only list of models, so a config
can name a model but never make the lab import arbitrary code.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lab.errors import ConfigError
from lab.models.gpt import GPT, GPTConfig
from lab.models.mlp import MLP, MLPConfig
from lab.models.vision import CNN, CNNConfig, ViT, ViTConfig

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "gpt": (GPTConfig, GPT),
    "cnn": (CNNConfig, CNN),
    "vit": (ViTConfig, ViT),
    "mlp": (MLPConfig, MLP),
}
"""Model name -> (config dataclass, model class)."""


def build_model(config: Any) -> nn.Module:
    """The model ``config.name`` names, built from ``config`` (raises ConfigError for unknown names)."""
    name = getattr(config, "name", None)
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError("model.name", name, f"one of {', '.join(MODELS)}")
    return MODELS[name][1](config)


__all__ = [
    "MODELS", "build_model",
    "GPT", "GPTConfig", "CNN", "CNNConfig", "ViT", "ViTConfig", "MLP", "MLPConfig",
]
