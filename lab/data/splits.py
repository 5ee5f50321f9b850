"""Shared pieces of every DataModule: config checks, split sizes, loaders, standardising.

    from lab.data.splits import validate_data_config, split_indices, make_loader
    validate_data_config(config)                  # ConfigError before any work
    idx = split_indices(len(y), 0.1, 0.1, seed=1337, stratify=y)  # {"train", "val", "test"}
    loader = make_loader(dataset, batch_size=32, num_workers=0, shuffle=True, seed=1337)

``ArrayDataModule`` is the base of the in-memory DataModules (digits,
regression): a subclass only says how to build its train/val/test tensors.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from lab.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_int(field: str, value: Any, minimum: int) -> None:
    """ConfigError unless ``value`` is an integer >= ``minimum``."""
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise ConfigError(field, value, f"an integer >= {minimum}")


def validate_data_config(config: Any, prefix: str = "data") -> None:
    """Check the fields every data config has; raise ConfigError naming the first bad one.

    val_fraction must be in (0, 1) because training always validates;
    test_fraction may be 0 (no test split); together they must leave training data.
    """
    val, test = config.val_fraction, config.test_fraction
    if not _is_number(val) or not 0 < val < 1:
        raise ConfigError(f"{prefix}.val_fraction", val, "a fraction in (0, 1)")
    if not _is_number(test) or not 0 <= test < 1:
        raise ConfigError(f"{prefix}.test_fraction", test, "a fraction in [0, 1) (0 = no test split)")
    if val + test >= 1:
        raise ConfigError(
            f"{prefix}.test_fraction", test,
            f"a fraction in (0, 1) with val_fraction + test_fraction < 1 (val_fraction is {val})",
            hint="leave some data for training",
        )
    check_int(f"{prefix}.batch_size", config.batch_size, 1)
    check_int(f"{prefix}.num_workers", config.num_workers, 0)


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """How many of ``n`` items go to each split; val and test round down, train gets the rest.

    Only splits in use are listed: no "test" key when test_fraction is 0.
    """
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    sizes = {"train": n - n_val - n_test, "val": n_val}
    if test_fraction > 0:
        sizes["test"] = n_test
    return sizes


def split_indices(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Shuffled, disjoint index arrays per split (stratified by ``stratify`` labels if given)."""
    sizes = split_sizes(n, val_fraction, test_fraction)
    empty = [name for name, size in sizes.items() if size < 1]
    if empty:
        raise DataError(
            f"{n} samples are too few for a {', '.join(empty)} split at "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}; use more data or larger fractions"
        )
    idx = np.arange(n)
    try:
        rest, test = (idx, idx[:0]) if "test" not in sizes else train_test_split(
            idx, test_size=sizes["test"], random_state=seed, stratify=stratify)
        train, val = train_test_split(
            rest, test_size=sizes["val"], random_state=seed,
            stratify=None if stratify is None else stratify[rest])
    except ValueError as e:
        # sklearn refuses a stratified split smaller than the number of classes.
        raise DataError(f"cannot split {n} samples: {e}; use larger val/test fractions") from None
    out = {"train": np.sort(train), "val": np.sort(val)}
    if "test" in sizes:
        out["test"] = np.sort(test)
    return out


def standardise(
    arrays: dict[str, np.ndarray], axis: int | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Scale every split with the *train* split's mean/std (no peeking at val/test).

    Returns (scaled arrays, mean, std) with ``axis`` reduced away; a constant
    column keeps std 1 instead of dividing by 0.
    """
    train = arrays["train"].astype(np.float64)
    mean = train.mean(axis=axis, keepdims=axis is not None)
    std = train.std(axis=axis, keepdims=axis is not None)
    std = np.where(std > 0, std, 1.0)
    scaled = {k: ((v - mean) / std).astype(np.float32) for k, v in arrays.items()}
    if axis is not None:
        mean, std = mean.squeeze(axis), std.squeeze(axis)
    return scaled, np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)


class ResumableSampler(Sampler[int]):
    """Sample order that depends only on (seed, epoch), and can start part-way through an epoch.

    A resumed run calls ``skip(n)`` with the samples the killed run had already consumed
    in this epoch, so the n-th batch after resuming is the n-th batch of the original.
    Lightning calls ``set_epoch`` at each epoch start (a new permutation per epoch).
    """

    def __init__(self, n: int, shuffle: bool = False, seed: int = 0) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, samples: int) -> None:
        """Leave out the first ``samples`` indices of the next iteration only."""
        self._skip = samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        start, self._skip = self._skip, 0
        return iter(order[start:])

    def __len__(self) -> int:
        return self.n


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch (see ResumableSampler).

    It gets its own generator: without one, every ``iter(loader)`` draws a worker seed from
    the global torch RNG, so a validation pass would shift the dropout masks of the training
    steps after it, and a run resumed from a checkpoint taken just before that pass would
    diverge from the uninterrupted one.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(len(dataset), shuffle=shuffle, seed=seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def require_split(datasets: dict[str, Any] | None, split: str, owner: str) -> Any:
    """``datasets[split]``, or a DataError saying why it is not there."""
    if datasets is None:
        raise DataError(f"{owner} is not set up yet; call prepare_data() and setup() first")
    if split not in datasets:
        raise DataError(f"{owner} has no {split} split because data.test_fraction is 0; "
                        "set it > 0 to get one")
    return datasets[split]


class ArrayDataModule(pl.LightningDataModule):
    """Base for small in-memory datasets: subclasses implement ``build_splits``."""

    def __init__(self, config: Any, seed: int = 1337) -> None:
        super().__init__()
        validate_data_config(config)
        self.config = config
        self.seed = seed
        self.datasets: dict[str, TensorDataset] | None = None

    def build_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(x, y) numpy arrays per split, already scaled and with their final dtypes."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        # Lightning calls setup once per stage; the data is the same for all of them.
        if self.datasets is None:
            self.datasets = {
                name: TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
                for name, (x, y) in self.build_splits().items()
            }

    @property
    def split_sizes(self) -> dict[str, int]:
        """Samples per split (after setup)."""
        require_split(self.datasets, "train", type(self).__name__)
        return {name: len(ds) for name, ds in self.datasets.items()}

    def _loader(self, split: str) -> DataLoader:
        dataset = require_split(self.datasets, split, type(self).__name__)
        return make_loader(dataset, self.config.batch_size, self.config.num_workers,
                           shuffle=split == "train", seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
