"""Tests for lab.data.vision (digits) and the shared split helpers it uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lab.data.splits import split_indices
from lab.data.vision import DigitsDataConfig, DigitsDataModule
from lab.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def dm() -> DigitsDataModule:
    module = DigitsDataModule(DigitsDataConfig(), seed=1337)
    module.setup()
    return module


def tensors(module: DigitsDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return module.datasets[split].tensors


def test_shapes_dtypes_and_sizes(dm: DigitsDataModule) -> None:
    assert dm.split_sizes == {"train": 1439, "val": 179, "test": 179}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert dm.num_classes == 10 and dm.class_names == [str(i) for i in range(10)]
    assert set(tensors(dm, "train")[1].tolist()) == set(range(10))


def test_stratified_class_proportions(dm: DigitsDataModule) -> None:
    shares = {s: np.bincount(tensors(dm, s)[1].numpy(), minlength=10) / dm.split_sizes[s] for s in dm.datasets}
    for split in ("val", "test"):
        assert np.abs(shares[split] - shares["train"]).max() < 0.015


def test_normalised_with_train_statistics(dm: DigitsDataModule) -> None:
    train = tensors(dm, "train")[0]
    assert abs(float(train.mean())) < 1e-5 and abs(float(train.std()) - 1) < 1e-3
    val = tensors(dm, "val")[0]
    assert abs(float(val.mean())) < 0.1 and float(val.mean()) != pytest.approx(0, abs=1e-6)
    assert 0.2 < dm.mean < 0.4 and 0.3 < dm.std < 0.5  # pixels were /16 first


def test_split_indices_disjoint_and_complete() -> None:
    labels = np.repeat(np.arange(5), 40)
    idx = split_indices(len(labels), 0.1, 0.2, seed=0, stratify=labels)
    together = np.concatenate(list(idx.values()))
    assert len(together) == len(set(together.tolist())) == len(labels)
    assert [len(idx[s]) for s in ("train", "val", "test")] == [140, 20, 40]
    assert split_indices(len(labels), 0.1, 0.2, seed=0, stratify=labels)["val"].tolist() == idx["val"].tolist()


def test_split_too_small_refused() -> None:
    with pytest.raises(DataError, match="too few"):
        split_indices(5, 0.1, 0.1, seed=0)


def test_deterministic_given_seed() -> None:
    def first_batch(seed: int) -> torch.Tensor:
        module = DigitsDataModule(DigitsDataConfig(), seed=seed)
        module.setup()
        return next(iter(module.train_dataloader()))[1]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))


def test_train_loader_shuffles_eval_loaders_do_not(dm: DigitsDataModule) -> None:
    _, y_train = next(iter(dm.train_dataloader()))
    assert not torch.equal(y_train, tensors(dm, "train")[1][:64])
    _, y_val = next(iter(dm.val_dataloader()))
    assert torch.equal(y_val, tensors(dm, "val")[1][:64])


def test_no_test_split(tmp_path) -> None:
    module = DigitsDataModule(DigitsDataConfig(test_fraction=0.0))
    module.setup()
    assert set(module.split_sizes) == {"train", "val"}
    with pytest.raises(DataError, match="no test split"):
        module.test_dataloader()


def test_loader_before_setup_refused() -> None:
    with pytest.raises(DataError, match="setup"):
        DigitsDataModule(DigitsDataConfig()).train_dataloader()


@pytest.mark.parametrize("field, value", [("val_fraction", 1.5), ("test_fraction", 1.0), ("batch_size", 0)])
def test_bad_config(field: str, value) -> None:
    with pytest.raises(ConfigError) as e:
        DigitsDataModule(DigitsDataConfig(**{field: value}))
    assert e.value.field == f"data.{field}"
