"""The CNN family: a small convolutional classifier of square grey images (the digits).

    from lab.families.cnn import FAMILY
    FAMILY.task, FAMILY.data                 # "classifier", ("digits",)
"""

from __future__ import annotations

from typing import Any

import torch

from lab.families.record import ModelFamily
from lab.models.vision import CNN, CNNConfig
from lab.modules import Classifier


def module(cfg: Any, model: Any, dm: Any) -> Classifier:
    return Classifier(model, cfg.optimizer, cfg.trainer.max_steps, num_classes=cfg.model.num_classes)


def images(c: Any, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``[n, 1, size, size]`` and class labels: the example batch of image classifiers."""
    return (torch.randn(n, 1, c.image_size, c.image_size, generator=gen),
            torch.randint(0, c.num_classes, (n,), generator=gen))


def narrow(c: CNNConfig, scale: float) -> dict[str, Any]:
    return {"channels": [max(1, round(ch * scale)) for ch in c.channels], "hidden": max(1, round(c.hidden * scale))}


FAMILY = ModelFamily(
    name="cnn", config=CNNConfig, model=CNN, data=("digits",), task="classifier", module=module, example=images,
    loss=Classifier.loss, metric="val/accuracy", mode="max", narrow=narrow,
    describe="A CNN image classifier: images [batch, 1, height, width] -> logits [batch, classes]",
)
