"""The CNN family: a small convolutional classifier of square grey images (the digits).

    from lab.families.cnn import FAMILY
    FAMILY.task, FAMILY.data                 # "classifier", ("digits",)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lab.compress.structure import Group, Structure, cuts, neurons
from lab.families.record import Explainable, ModelFamily, Servable
from lab.models.vision import CNN, CNNConfig
from lab.modules import Classifier


def module(cfg: Any, model: Any, dm: Any) -> Classifier:
    return Classifier(model, cfg.optimizer, cfg.trainer.max_steps, num_classes=cfg.model.num_classes)


def images(c: Any, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images ``[n, 1, size, size]`` and class labels: the example batch of image classifiers."""
    return (torch.randn(n, 1, c.image_size, c.image_size, generator=gen),
            torch.randint(0, c.num_classes, (n,), generator=gen))


def conv_groups(model: nn.Module) -> list[Group]:
    """Each conv stage's output channels (with its BatchNorm), then the hidden layer's neurons."""
    groups: list[Group] = []
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for j, i in enumerate(convs):
        c = model.features[i].out_channels
        if j + 1 < len(convs):
            group = neurons(model, f"features.{i}", f"features.{convs[j + 1]}", kind="channels")
        else:
            group = neurons(model, f"features.{i}", "head.1", model.head[1].in_features // c, "channels")
        # The BatchNorm after the conv has one scale, shift and running statistic per channel.
        group.cuts += cuts(model, f"features.{i + 1}", 0, torch.arange(c),
                           ("weight", "bias", "running_mean", "running_var"))
        groups.append(group)
    groups.append(neurons(model, "head.1", "head.4"))
    return groups


def conv_shape(model: nn.Module, counts: list[int]) -> dict[str, Any]:
    model.config = dataclasses.replace(model.config, channels=tuple(counts[:-1]), hidden=counts[-1])
    return dataclasses.asdict(model.config)


IMAGE_EXPLAIN = Explainable(("integrated_gradients", "saliency", "occlusion"), "image", baseline="black")
"""Attribution heatmaps over the pixels, from a black image (the ViT shares them)."""


def narrow(c: CNNConfig, scale: float) -> dict[str, Any]:
    return {"channels": [max(1, round(ch * scale)) for ch in c.channels], "hidden": max(1, round(c.hidden * scale))}


FAMILY = ModelFamily(
    name="cnn", config=CNNConfig, model=CNN, data=("digits",), task="classifier", module=module, example=images,
    loss=Classifier.loss, metric="val/accuracy", mode="max", narrow=narrow,
    structure=Structure(groups=conv_groups, shape=conv_shape), explain=IMAGE_EXPLAIN,
    serve=Servable("image", "numbers", png=True),
    describe="A CNN image classifier: images [batch, 1, height, width] -> logits [batch, classes]",
)
