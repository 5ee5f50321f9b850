"""Tests for lab.data.tabular (synthetic regression), the registry and the shared config check."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sklearn.linear_model import LinearRegression

from lab.data import DATAMODULES
from lab.data.tabular import RegressionDataConfig, RegressionDataModule
from lab.errors import ConfigError


def built(seed: int = 1337, **kw) -> RegressionDataModule:
    module = RegressionDataModule(RegressionDataConfig(**kw), seed=seed)
    module.setup()
    return module


def test_shapes_and_dtypes() -> None:
    dm = built()
    assert dm.split_sizes == {"train": 800, "val": 100, "test": 100}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 10) and x.dtype == torch.float32
    assert y.shape == (32, 1) and y.dtype == torch.float32


def test_deterministic_given_seed() -> None:
    a, b, c = built(1), built(1), built(2)
    for split in ("train", "val", "test"):
        assert all(torch.equal(p, q) for p, q in zip(a.datasets[split].tensors, b.datasets[split].tensors))
    assert not torch.equal(a.datasets["train"].tensors[0], c.datasets["train"].tensors[0])
    assert torch.equal(next(iter(a.train_dataloader()))[0], next(iter(b.train_dataloader()))[0])


def test_standardised_with_train_statistics() -> None:
    dm = built()
    x, y = dm.datasets["train"].tensors
    assert torch.allclose(x.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(10), atol=1e-4)
    assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-4
    assert dm.stats["x_mean"].shape == (10,) and dm.stats["y_mean"].shape == (1,)
    assert 10 < dm.stats["y_mean"].item() < 20  # raw Friedman targets average ~14


def test_target_is_nonlinear() -> None:
    # A linear model must leave clear room for the MLP, or the example teaches nothing.
    x, y = (t.numpy() for t in built(noise=0.0).datasets["train"].tensors)
    assert LinearRegression().fit(x, y).score(x, y) < 0.9


@pytest.mark.parametrize("field, value", [("n_features", 3), ("n_samples", 2), ("noise", -1.0)])
def test_bad_regression_config(field: str, value) -> None:
    with pytest.raises(ConfigError) as e:
        RegressionDataModule(RegressionDataConfig(**{field: value}))
    assert e.value.field == f"data.{field}"


def test_registry_names_match_configs() -> None:
    assert set(DATAMODULES) == {"text", "digits", "regression", "labelled-text", "speech", "ratings"}
    for name, (config_cls, module_cls) in DATAMODULES.items():
        assert dataclasses.is_dataclass(config_cls) and config_cls().name == name
        assert hasattr(module_cls, "train_dataloader")


@pytest.mark.parametrize("name", ["digits", "regression", "text"])
@pytest.mark.parametrize(
    "changes, field",
    [({"val_fraction": 1.5}, "data.val_fraction"), ({"val_fraction": 0}, "data.val_fraction"),
     ({"test_fraction": -0.1}, "data.test_fraction"),
     ({"val_fraction": 0.5, "test_fraction": 0.5}, "data.test_fraction"),
     ({"batch_size": 0}, "data.batch_size"), ({"num_workers": -1}, "data.num_workers")],
)
def test_every_config_validates_fractions(name: str, changes: dict, field: str) -> None:
    config_cls, module_cls = DATAMODULES[name]
    kw = {"block_size": 8} if name == "text" else {}
    with pytest.raises(ConfigError) as e:
        module_cls(config_cls(**changes), **kw)
    assert e.value.field == field
    if "fraction" in field:
        assert "a fraction in" in str(e.value)
