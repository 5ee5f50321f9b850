"""Pure-PyTorch models (no Lightning in here); their families, in ``lab.families``, register them.

    from lab.models import CNNConfig, GPT, GPTConfig, MLPConfig, ViTConfig
    model = GPT(GPTConfig(vocab_size=65))                # a GPT, an nn.Module
    GPTConfig(n_head=3).validate()                       # ConfigError: n_embd not a multiple of n_head

Each config dataclass validates itself (``validate()``, which the model's constructor calls
too); ``lab.families`` is the one registry that maps ``model.name`` to a config and a model,
so a config can name a model but never make the lab import arbitrary code.
"""

from __future__ import annotations

from lab.models.gpt import GPT, GPTConfig
from lab.models.mlp import MLP, MLPConfig
from lab.models.vision import CNN, CNNConfig, ViT, ViTConfig

__all__ = ["GPT", "GPTConfig", "CNN", "CNNConfig", "ViT", "ViTConfig", "MLP", "MLPConfig"]
