"""Synthetic regression: 10 features -> 1 target, for the MLP example.

    from lab.data.tabular import RegressionDataConfig, RegressionDataModule
    dm = RegressionDataModule(RegressionDataConfig(n_samples=1000), seed=1337)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))   # x: float32 [32, 10], y: float32 [32, 1]

The data is scikit-learn's ``make_friedman1``: features uniform in [0, 1] and
``y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise``; features past
the fifth are pure distractors. Unlike a linear target, this is a nonlinear
function a small MLP (10 -> 20 -> 1) can learn well while a linear model
cannot, so the loss curve shows the network actually learning. Features and
target are standardised with train-split statistics; everything depends on
``seed`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import make_friedman1

from lab.data.splits import ArrayDataModule, check_int, split_indices, standardise, validate_data_config
from lab.errors import ConfigError, require, require_positive


@dataclass
class RegressionDataConfig:
    """Settings for the synthetic regression DataModule (the ``data:`` section of a config)."""

    name: str = "regression"
    """Registry key; selects RegressionDataModule."""
    n_samples: int = 1000
    """Rows generated in total, before splitting."""
    n_features: int = 10
    """Input features; at least 5 (the target uses the first 5, the rest are noise inputs)."""
    noise: float = 0.1
    """Std of the Gaussian noise added to the target (before standardising); >= 0."""
    val_fraction: float = 0.1
    """Share of the rows held out for validation, in (0, 1)."""
    test_fraction: float = 0.1
    """Share of the rows held out for the final test, in [0, 1); 0 = no test split."""
    batch_size: int = 32
    """Rows per batch."""
    num_workers: int = 0
    """DataLoader worker processes; 0 loads in the main process (fastest for data this small)."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field."""
        validate_data_config(self)
        require_positive("data", self, "n_samples", "n_features")
        require(self.noise >= 0, "data.noise", self.noise, "a number >= 0")


class RegressionDataModule(ArrayDataModule):
    """Friedman #1 regression as x float32 [N, n_features] and y float32 [N, 1]."""

    def __init__(self, config: RegressionDataConfig, seed: int = 1337) -> None:
        super().__init__(config, seed)
        check_int("data.n_samples", config.n_samples, 10)
        check_int("data.n_features", config.n_features, 5)
        if not isinstance(config.noise, (int, float)) or isinstance(config.noise, bool) or config.noise < 0:
            raise ConfigError("data.noise", config.noise, "a number >= 0")
        self.n_features = config.n_features
        self.stats: dict[str, np.ndarray] = {}
        """Train-split x_mean/x_std/y_mean/y_std, set by setup; to map predictions back to raw units."""

    def build_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        c = self.config
        x, y = make_friedman1(n_samples=c.n_samples, n_features=c.n_features, noise=c.noise, random_state=self.seed)
        idx = split_indices(len(y), c.val_fraction, c.test_fraction, self.seed)
        xs, x_mean, x_std = standardise({k: x[i] for k, i in idx.items()}, axis=0)
        ys, y_mean, y_std = standardise({k: y[i, None] for k, i in idx.items()}, axis=0)
        self.stats = {"x_mean": x_mean, "x_std": x_std, "y_mean": y_mean, "y_std": y_std}
        return {k: (xs[k], ys[k]) for k in idx}
