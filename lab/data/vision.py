"""Handwritten digits: a tiny image classification task that needs no download.

    from lab.data.vision import DigitsDataConfig, DigitsDataModule
    dm = DigitsDataModule(DigitsDataConfig(batch_size=64), seed=1337)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))   # x: float32 [64, 1, 8, 8], y: int64 [64]
    dm.num_classes, dm.class_names             # 10, ["0", ..., "9"]

The images are scikit-learn's bundled ``load_digits`` (1,797 8x8 grey images,
pixel values 0..16). Splits are stratified so every class has the same share in
train, val and test; pixels are scaled to [0, 1] and then standardised with the
train split's mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits

from lab.data.splits import ArrayDataModule, split_indices, standardise, validate_data_config


@dataclass
class DigitsDataConfig:
    """Settings for the digits DataModule (the ``data:`` section of a config)."""

    name: str = "digits"
    """Registry key; selects DigitsDataModule."""
    val_fraction: float = 0.1
    """Share of the images held out for validation, in (0, 1)."""
    test_fraction: float = 0.1
    """Share of the images held out for the final test, in [0, 1); 0 = no test split."""
    batch_size: int = 64
    """Images per batch."""
    num_workers: int = 0
    """DataLoader worker processes; 0 loads in the main process (fastest for data this small)."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field."""
        validate_data_config(self)


class DigitsDataModule(ArrayDataModule):
    """8x8 digit images as x float32 [N, 1, 8, 8] and labels y int64 [N]."""

    num_classes = 10
    class_names = [str(i) for i in range(10)]
    input_shape = (1, 8, 8)

    def __init__(self, config: DigitsDataConfig, seed: int = 1337) -> None:
        super().__init__(config, seed)
        self.mean: float | None = None
        """Train-split pixel mean (after /16), set by setup; needed to normalise new images."""
        self.std: float | None = None
        """Train-split pixel std (after /16), set by setup."""

    def build_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        digits = load_digits()
        images = digits.images.astype(np.float32)[:, None] / 16.0  # add the channel axis
        labels = digits.target.astype(np.int64)
        idx = split_indices(len(labels), self.config.val_fraction, self.config.test_fraction,
                            self.seed, stratify=labels)
        # One scalar mean/std: per-pixel std is 0 on the always-blank border pixels.
        scaled, mean, std = standardise({k: images[i] for k, i in idx.items()}, axis=None)
        self.mean, self.std = float(mean), float(std)
        return {k: (scaled[k], labels[i]) for k, i in idx.items()}
