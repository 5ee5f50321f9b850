"""Image classifiers for small grey images: a CNN and a vision transformer.

    import torch
    from lab.models.vision import CNN, CNNConfig, ViT, ViTConfig
    x = torch.randn(64, 1, 8, 8)                     # a batch of 8x8 digits
    CNN(CNNConfig(channels=[16, 32]))(x)             # logits [64, 10]
    ViT(ViTConfig(patch_size=2, n_embd=64))(x)       # logits [64, 10]
    CNN(CNNConfig(image_size=40, image_width=41))(torch.randn(8, 1, 40, 41))   # a log-mel spectrogram: bands x frames

The ViT is the GPT's ``Block`` with bidirectional attention (``is_causal=False``): an image
patch may look at every other patch, and there is only one transformer block in the lab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lab.errors import require, require_positive
from lab.models.gpt import Block, check_heads

IN_CHANNELS = 1
"""Input image channels: the lab's image data (8x8 digits) is greyscale."""


@dataclass
class CNNConfig:
    """Shape of the CNN (the ``model:`` section of a config with ``name: cnn``)."""

    name: str = "cnn"
    """Registry key; selects CNN."""
    channels: tuple[int, ...] = (16, 32)
    """Output channels of each conv stage (a list is accepted); one conv + BatchNorm + ReLU (+ pool) each."""
    hidden: int = 64
    """Width of the hidden fully connected layer."""
    num_classes: int = 10
    """Classes to predict (logits per image)."""
    dropout: float = 0.1
    """Dropout before the output layer."""
    image_size: int = 8
    """Height of the input images in pixels (and their width, unless image_width says otherwise)."""
    image_width: int | None = None
    """Width of the input images in pixels (a spectrogram's frames); null = square, image_size wide."""

    def __post_init__(self) -> None:
        # YAML gives lists; a tuple keeps the config hashable and its type honest.
        self.channels = tuple(self.channels)

    @property
    def width(self) -> int:
        """The input width in pixels: ``image_width``, or ``image_size`` for square images."""
        return self.image_size if self.image_width is None else self.image_width

    def validate(self) -> None:
        """Refuse a shape that cannot be built, naming the field and what is allowed."""
        require_positive("model", self, "channels", "hidden", "num_classes", "image_size")
        require(self.image_width is None or self.image_width >= 1, "model.image_width", self.image_width,
                "a whole number >= 1, or null for square images")
        require(0 <= self.dropout < 1, "model.dropout", self.dropout, "a number in [0, 1)")


class CNN(nn.Module):
    """Conv stages (3x3 conv, BatchNorm, ReLU, 2x2 max-pool while both sides are >= 2 px) -> MLP head."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        config.validate()
        channels = tuple(config.channels)
        self.config = config
        layers: list[nn.Module] = []
        in_ch, height, width = IN_CHANNELS, config.image_size, config.width
        for out_ch in channels:
            # No conv bias: BatchNorm's shift right after it would cancel it anyway.
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU()]
            # Halve the resolution while there is any left, so an 8x8 input with many
            # stages ends at 1x1 instead of a pooling error.
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * height * width, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def num_params(self) -> int:
        """Trainable parameter count (BatchNorm's running statistics are buffers, not counted)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 1, image_size, width]`` -> logits ``[B, num_classes]``."""
        return self.head(self.features(x))


@dataclass
class ViTConfig:
    """Shape of the vision transformer (the ``model:`` section of a config with ``name: vit``)."""

    name: str = "vit"
    """Registry key; selects ViT."""
    image_size: int = 8
    """Height and width of the (square) input images, in pixels."""
    patch_size: int = 2
    """Side of the square patches that become tokens; must divide image_size."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 64
    """Width of the token embeddings."""
    num_classes: int = 10
    """Classes to predict (logits per image)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention weights and residual branches."""

    def validate(self) -> None:
        """Refuse a shape that cannot be built, naming the field and what is allowed."""
        require_positive("model", self, "image_size", "patch_size", "n_layer", "n_head", "n_embd", "num_classes")
        require(self.image_size % self.patch_size == 0, "model.patch_size", self.patch_size,
                f"a divisor of model.image_size={self.image_size}")
        check_heads(self)
        require(0 <= self.dropout < 1, "model.dropout", self.dropout, "a number in [0, 1)")


class ViT(nn.Module):
    """Patches -> linear embedding + positions, a CLS token, transformer blocks, head on CLS."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        n_patches = (config.image_size // config.patch_size) ** 2
        # A conv with kernel = stride = patch is exactly "cut into patches, flatten, Linear".
        self.patch_embed = nn.Conv2d(IN_CHANNELS, config.n_embd, config.patch_size, stride=config.patch_size)
        # The CLS token attends to all patches; its final state summarises the image.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.n_embd))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, config.n_embd))
        self.drop = nn.Dropout(config.dropout)
        # Biases on, as in the original ViT; attention is bidirectional over patches.
        self.blocks = nn.ModuleList(
            Block(config.n_embd, config.n_head, config.dropout, bias=True, is_causal=False)
            for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def num_params(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 1, image_size, image_size]`` -> logits ``[B, num_classes]``."""
        if x.shape[-2:] != (self.config.image_size, self.config.image_size):
            raise ValueError(f"expected {self.config.image_size}x{self.config.image_size} images, "
                             f"got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, n_embd, h, w] -> [B, h*w, n_embd]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.drop(torch.cat((cls, x), dim=1) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))
