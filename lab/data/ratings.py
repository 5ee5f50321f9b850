"""Implicit feedback for recommenders: who chose which item, and when.

    from lab.data.ratings import RatingsDataConfig, RatingsDataModule
    dm = RatingsDataModule(RatingsDataConfig(), seed=1337, num_train_samples=256 * 600)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))   # users int64 [256]; y int64 [256, 2]: (chosen item, a negative)
    x, y = next(iter(dm.val_dataloader()))     # users [256]; y[:, 0] held out, y[:, 1:] seen before (-1 pads)
    dm.n_users, dm.n_items, dm.item_counts     # counts: how often each item was chosen in the train split
    dm.history(user, "test"), dm.truth         # what the user chose before; the planted preferences (synthetic)

The offline default is a synthetic world with planted structure (``lab.data.ratings_source``):
users and items have hidden tastes, items a Zipf popularity, and each user chooses items with
probability growing with both, so the truth is known and a popularity ranking is a real but
beatable baseline. ``data.path`` (a MovieLens-100k zip or a ratings file) or ``data.url`` +
``data.sha256`` read real data instead.

Split: leave-last-out per user. Each user's last choice (by time) is held out for the test,
the one before it for validation, the rest trains; ``test_fraction`` / ``val_fraction`` say
for what share of the users (1.0 = all), and a user with fewer than 3 choices only trains.

Negative sampling happens here, once per run: the training samples are the train choices in
a fresh seeded order per pass, each with one item the user never chose in training, drawn
from ``default_rng(seed)`` for ``num_train_samples`` samples. Like the text windows, the n-th
batch is therefore the same on every run and after a resume (``ResumeState`` skips the
sampler to where the killed run stopped).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lab.data.corpus import check_source
from lab.data.ratings_source import Interactions, read_interactions, synthesize
from lab.data.splits import check_int, make_loader, require_split
from lab.errors import DataError, require, require_positive
from lab.fileio import resolve_cache_dir

__all__ = ["RatingsDataConfig", "RatingsDataModule", "Split", "leave_last_out", "sample_negatives"]

PAD = -1
"""Fills the rows of ``y[:, 1:]`` (the items a user has already seen) up to the longest history."""
MIN_CHOICES = 3
"""A user is held out only with this many choices or more: one for the test, one for validation, one to train."""


@dataclass
class RatingsDataConfig:
    """Settings for the implicit-feedback DataModule (the ``data:`` section with ``name: ratings``)."""

    name: str = "ratings"
    """Registry key; selects RatingsDataModule."""
    path: str | None = None
    """A MovieLens-100k zip (ml-100k.zip), or a ratings file (user, item, rating, timestamp; tab or comma
    separated, with or without a header); None = the synthetic world."""
    url: str | None = None
    """A MovieLens-100k zip (or ratings file) to download, e.g.
    https://files.grouplens.org/datasets/movielens/ml-100k.zip; cached under the cache dir's downloads/."""
    sha256: str | None = None
    """SHA-256 of the file at ``url``; required with ``url`` so a changed or broken download is refused."""
    min_rating: float = 0.0
    """Only ratings at least this high count as a choice (MovieLens rates 1-5); 0 = every rating counts."""
    n_users: int = 1000
    """Synthetic world: users (a file decides its own)."""
    n_items: int = 500
    """Synthetic world: items."""
    factors: int = 8
    """Synthetic world: dimensions of the hidden tastes users and items share."""
    interactions: int = 30
    """Synthetic world: choices per user on average (each user makes at least 5)."""
    taste: float = 2.0
    """Synthetic world: weight of the hidden tastes in a choice against popularity's (0 = popularity alone)."""
    popularity: float = 1.0
    """Synthetic world: Zipf exponent of item popularity (0 = all items equally popular)."""
    genres: int = 8
    """Synthetic world: item features (genres, two per item, linked to the hidden traits); 0 = none."""
    generator_seed: int = 0
    """Synthetic world: the seed of the world itself, apart from the run's seed (which orders the batches
    and draws the negatives), so runs with different seeds see the same users and items."""
    val_fraction: float = 1.0
    """Share of the users whose second-to-last choice is held out for validation, in (0, 1]."""
    test_fraction: float = 1.0
    """Share of the users whose last choice is held out for the final test, in [0, 1]; 0 = no test split."""
    batch_size: int = 256
    """(user, item) pairs per training batch; users per evaluation batch."""
    num_workers: int = 0
    """DataLoader worker processes; 0 loads in the main process (the batches are ready-made tensors)."""

    def validate(self) -> None:
        """Refuse invalid values with a ConfigError naming the field (before any file is read)."""
        check_source(self)
        require(self.path is None or Path(self.path).expanduser().exists(), "data.path", self.path,
                "an existing MovieLens-100k zip or ratings file", "leave it out for the synthetic world")
        require(0 < self.val_fraction <= 1, "data.val_fraction", self.val_fraction, "a fraction in (0, 1]")
        require(0 <= self.test_fraction <= 1, "data.test_fraction", self.test_fraction,
                "a fraction in [0, 1] (0 = no test split)")
        require(self.min_rating >= 0, "data.min_rating", self.min_rating, "a number >= 0 (0 = every rating counts)")
        require_positive("data", self, "n_users", "n_items", "factors", "interactions", "batch_size")
        require(self.n_items >= 10, "data.n_items", self.n_items, "a whole number >= 10")
        require(self.interactions < self.n_items // 2, "data.interactions", self.interactions,
                f"fewer than half of data.n_items = {self.n_items}", "users must leave items unchosen to rank")
        require(self.taste >= 0 and self.popularity >= 0, "data.taste" if self.taste < 0 else "data.popularity",
                self.taste if self.taste < 0 else self.popularity, "a number >= 0")
        require(0 <= self.genres <= self.n_items, "data.genres", self.genres, "a whole number >= 0")
        require(0 <= self.generator_seed < 2**32, "data.generator_seed", self.generator_seed,
                f"a whole number in [0, {2**32 - 1}]")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "a whole number >= 0")

    @property
    def synthetic(self) -> bool:
        """Whether the data is the generated world (no path, no url)."""
        return self.path is None and self.url is None


@dataclass
class Split:
    """Leave-last-out: the train choices, and per held-out split its users, their item and what they saw."""

    train_users: np.ndarray
    train_items: np.ndarray
    held: dict[str, tuple[np.ndarray, np.ndarray]]
    """split -> (users, held-out item of each)."""
    seen: dict[str, list[np.ndarray]]
    """split -> per user of the split, the items chosen before its held-out one (what the ranking leaves out)."""


def leave_last_out(data: Interactions, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Hold out each chosen user's last choice for the test and the one before for validation."""
    order = np.lexsort((np.arange(len(data.users)), data.times, data.users))  # by user, then time, then file order
    users, items = data.users[order], data.items[order]
    starts = np.searchsorted(users, np.arange(data.n_users))
    ends = np.searchsorted(users, np.arange(data.n_users), side="right")
    eligible = np.flatnonzero(ends - starts >= MIN_CHOICES)
    rng = np.random.default_rng(seed)
    picked = {name: np.sort(rng.permutation(eligible)[: round(frac * len(eligible))]) if frac < 1 else eligible
              for name, frac in (("test", test_fraction), ("val", val_fraction))}
    keep = np.ones(len(users), dtype=bool)
    last = ends.copy()  # one past each user's newest choice still in training
    held: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen: dict[str, list[np.ndarray]] = {}
    for name in ("test", "val"):  # the test first: validation holds out the choice before the test's
        if name == "test" and test_fraction == 0:
            continue
        u = picked[name]
        pos = last[u] - 1
        keep[pos] = False
        last[u] -= 1
        held[name] = (u, items[pos])
        seen[name] = [items[starts[i]:p] for i, p in zip(u, pos)]  # everything the user chose before it
    if not held.get("val", (np.empty(0),))[0].size:
        raise DataError(f"no user has {MIN_CHOICES} or more choices, so nothing can be held out for validation: "
                        "use more data (or a lower data.min_rating)")
    return Split(users[keep], items[keep], {k: held[k] for k in ("val", "test") if k in held}, seen)


def sample_negatives(users: np.ndarray, n_items: int, chosen: np.ndarray, rng: np.random.Generator,
                     rounds: int = 64) -> np.ndarray:
    """One item per user drawn uniformly from those the user never chose (``chosen``: sorted user * n_items + item).

    Drawn for all at once, then redrawn where it hit a chosen item; after ``rounds`` a user who
    has chosen nearly every item keeps a chosen one (BPR then learns nothing from that pair).
    """
    neg = rng.integers(0, n_items, size=len(users))
    for _ in range(rounds):
        keys = users * n_items + neg
        hit = np.flatnonzero(chosen[np.minimum(np.searchsorted(chosen, keys), len(chosen) - 1)] == keys)
        if not hit.size:
            break
        neg[hit] = rng.integers(0, n_items, size=hit.size)
    return neg


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class RatingsDataModule(pl.LightningDataModule):
    """Implicit feedback as (users, (chosen, negative)) for training and (users, held-out + seen) for evaluation."""

    def __init__(self, config: RatingsDataConfig, seed: int = 1337, num_train_samples: int = 100_000,
                 cache_dir: str | Path | None = None) -> None:
        super().__init__()
        config.validate()  # every check before any reading
        check_int("num_train_samples", num_train_samples, 1)
        self.config, self.seed, self.num_train_samples = config, seed, num_train_samples
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.data: Interactions | None = None
        self.split: Split | None = None
        self.datasets: dict[str, TensorDataset] | None = None
        self.n_users = self.n_items = 0
        self.item_counts = np.zeros(0, dtype=np.int64)
        """Choices of each item in the train split: the popularity baseline, and what item pruning keeps."""
        self.item_features = np.zeros((0, 0), dtype=np.float32)
        """Per item, its features (genres, multi-hot) [n_items, n_features]; the two-tower model reads them."""
        self.truth: np.ndarray | None = None
        """Synthetic world: every user's planted preference for every item [n_users, n_items]; None for real data."""

    def prepare_data(self) -> None:
        """Read (or generate) the choices: a bad file is refused here, before any training."""
        if self.data is None:
            c = self.config
            self.data = synthesize(c) if c.synthetic else read_interactions(c, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        self.prepare_data()
        data = self.data
        c = self.config
        self.n_users, self.n_items = data.n_users, data.n_items
        self.item_features, self.truth = data.item_features, data.truth
        split = leave_last_out(data, c.val_fraction, c.test_fraction, self.seed)
        self.split = split
        self.item_counts = np.bincount(split.train_items, minlength=self.n_items)
        datasets = {"train": self._training_samples(split)}
        for name, (users, targets) in split.held.items():
            y = np.concatenate([targets[:, None], _padded(split.seen[name])], axis=1)
            datasets[name] = TensorDataset(torch.from_numpy(users.astype(np.int64)), torch.from_numpy(y))
        self.datasets = datasets

    def _training_samples(self, split: Split) -> TensorDataset:
        """``num_train_samples`` (user, chosen, negative): each pass over the train choices in a fresh order."""
        rng = np.random.default_rng(self.seed)
        n = len(split.train_users)
        passes = -(-self.num_train_samples // n)
        order = np.concatenate([rng.permutation(n) for _ in range(passes)])[: self.num_train_samples]
        users, pos = split.train_users[order], split.train_items[order]
        chosen = np.unique(split.train_users * self.n_items + split.train_items)
        neg = sample_negatives(users, self.n_items, chosen, rng)
        return TensorDataset(torch.from_numpy(users.astype(np.int64)),
                             torch.from_numpy(np.stack([pos, neg], axis=1).astype(np.int64)))

    @property
    def split_sizes(self) -> dict[str, int]:
        """Train choices, and users held out per evaluation split (after setup)."""
        require_split(self.datasets, "train", "RatingsDataModule")
        return {"train": len(self.split.train_users), **{k: len(u) for k, (u, _) in self.split.held.items()}}

    def held_out_users(self, split: str = "test") -> np.ndarray:
        """The users (ids, ascending) whose last choice ``split`` holds out."""
        return require_split(self.split.held if self.split else None, split, "RatingsDataModule")[0]

    def history(self, user: int, split: str = "test") -> np.ndarray:
        """The items ``user`` chose before its held-out ``split`` choice (all train choices for a user not held out)."""
        require_split(self.datasets, "train", "RatingsDataModule")
        users = self.split.held.get(split, (np.empty(0, dtype=np.int64),))[0]
        i = np.searchsorted(users, user)
        if i < len(users) and users[i] == user:
            return self.split.seen[split][i]
        return self.split.train_items[self.split.train_users == user]

    def held_out(self, user: int, split: str = "test") -> int | None:
        """The item ``user`` chose last in ``split`` (what a recommender should rank first), or None."""
        users, items = require_split(self.split.held if self.split else None, split, "RatingsDataModule")
        i = np.searchsorted(users, user)
        return int(items[i]) if i < len(users) and users[i] == user else None

    def item_name(self, item: int) -> str:
        """A readable name: the film's title (MovieLens), else "item <id>" and its genres."""
        return self.data.item_name(int(item))

    def _loader(self, split: str) -> DataLoader:
        dataset = require_split(self.datasets, split, "RatingsDataModule")
        return make_loader(dataset, self.config.batch_size, self.config.num_workers)

    def train_dataloader(self) -> DataLoader:
        # shuffle=False: the samples are already in a seeded random order, so the n-th batch is
        # the same on every run, and ResumableSampler.skip resumes exactly.
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
