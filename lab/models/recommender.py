"""Recommenders in plain PyTorch: matrix factorization and a two-tower model, one config.

    import torch
    from lab.models.recommender import Recommender, RecommenderConfig
    model = Recommender(RecommenderConfig(kind="mf", n_users=1000, n_items=500, dim=32))
    scores = model(torch.tensor([3, 17]))          # [2, 500]: how much users 3 and 17 should like each item
    top10 = scores.topk(10).indices                 # their recommendations (before leaving out what they saw)

Both score a user against every item with a dot product, so ``forward(users)`` is the whole
recommendation step and what evaluation, compression and export time:

- ``mf`` (matrix factorization): a vector per user, a vector and a bias per item;
  ``score = p_u . q_i + b_i``. The bias learns popularity, the vectors taste.
- ``two-tower``: each side's ID embedding (the item side plus a projection of its features,
  e.g. genres) goes through its own small MLP ("tower") to a unit vector;
  ``score = cos(user, item) / temperature``. Towers can read content, so a rarely chosen item
  with known genres still lands near the items like it.

The items are a table lookup (``ItemTable``): its rows, bias and features can be cut down to
the items kept by pruning (``kept`` holds their ids; every other item then scores ``PRUNED``),
and its embedding can be int8 (``torch.ao``'s quantized ``Embedding``), so the model is always
called through the table's modules, never its raw ``weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import require

KINDS = ("mf", "two-tower")
PRUNED = -1e4
"""The score of an item removed by pruning: below any real score, yet finite (a loss over it stays finite)."""


@dataclass
class RecommenderConfig:
    """A recommender scoring every item for a user (the ``model:`` section with ``name: recommender``)."""

    name: str = "recommender"
    """Registry key; selects Recommender."""
    kind: str = "mf"
    """"mf": matrix factorization trained with the BPR loss (a chosen item above a sampled other one);
    "two-tower": user and item towers trained with a softmax over the batch's chosen items (in-batch negatives)."""
    n_users: int | None = None
    """Users (rows of the user table); None = from the data."""
    n_items: int | None = None
    """Items (rows of the item table); None = from the data."""
    dim: int = 32
    """Width of the user and item vectors."""
    hidden: int = 64
    """two-tower: hidden width of each tower's MLP (unused by mf)."""
    item_features: int | None = None
    """two-tower: item feature columns its item tower reads (genres); None = from the data, 0 = IDs only."""
    temperature: float = 0.1
    """two-tower: scores are cosines divided by this (a lower value makes the softmax sharper)."""

    def validate(self) -> None:
        """Refuse a shape or setting that cannot be built, naming the field and what is allowed."""
        require(self.kind in KINDS, "model.kind", self.kind, " or ".join(KINDS))
        for field in ("n_users", "n_items"):
            value = getattr(self, field)
            require(value is None or value >= 1, f"model.{field}", value,
                    "a whole number >= 1, or null to take it from the data")
        require(self.dim >= 1, "model.dim", self.dim, "a whole number >= 1")
        require(self.hidden >= 1, "model.hidden", self.hidden, "a whole number >= 1")
        require(self.item_features is None or self.item_features >= 0, "model.item_features", self.item_features,
                "a whole number >= 0, or null to take it from the data")
        require(self.temperature > 0, "model.temperature", self.temperature, "a number > 0 (e.g. 0.1)")


class ItemTable(nn.Module):
    """The items a model scores: an embedding, a bias (mf) and features per row, and the item id of each row."""

    def __init__(self, n_items: int, dim: int, n_features: int, bias: bool) -> None:
        super().__init__()
        self.n_items = n_items
        self.embedding = nn.Embedding(n_items, dim)
        self.bias = nn.Parameter(torch.zeros(n_items)) if bias else None
        self.register_buffer("features", torch.zeros(n_items, n_features))
        self.register_buffer("kept", torch.arange(n_items))
        """Row -> item id: every item, until pruning removes rows."""

    def vectors(self) -> torch.Tensor:
        """Every row's embedding [rows, dim] (an int8 table is read back to float here)."""
        return self.embedding(torch.arange(len(self.kept), device=self.kept.device))

    def scatter(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores of the kept rows [B, rows] -> scores of every item [B, n_items] (removed items: ``PRUNED``)."""
        if len(self.kept) == self.n_items:
            return scores
        out = scores.new_full((scores.shape[0], self.n_items), PRUNED)
        return out.index_copy(1, self.kept, scores)


def tower(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))


class Recommender(nn.Module):
    """User ids ``[B]`` -> a score for every item ``[B, n_items]`` (higher = recommend first)."""

    def __init__(self, config: RecommenderConfig) -> None:
        super().__init__()
        config.validate()
        require(config.n_users is not None and config.n_items is not None, "model.n_users", config.n_users,
                "whole numbers for model.n_users and model.n_items (None is only allowed until the data fills them in)")
        self.config = config
        c = config
        self.users = nn.Embedding(c.n_users, c.dim)
        n_features = (c.item_features or 0) if c.kind == "two-tower" else 0
        self.items = ItemTable(c.n_items, c.dim, n_features, bias=c.kind == "mf")
        nn.init.normal_(self.users.weight, std=0.1)
        nn.init.normal_(self.items.embedding.weight, std=0.1)
        if c.kind == "two-tower":
            self.content = nn.Linear(n_features, c.dim, bias=False) if n_features else None
            self.user_tower, self.item_tower = tower(c.dim, c.hidden), tower(c.dim, c.hidden)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """[B, dim]: the user side of the dot product."""
        u = self.users(users)
        return F.normalize(self.user_tower(u), dim=-1) if self.config.kind == "two-tower" else u

    def item_vectors(self) -> torch.Tensor:
        """[rows, dim]: the item side, one row per kept item."""
        v = self.items.vectors()
        if self.config.kind != "two-tower":
            return v
        if self.content is not None:
            v = v + self.content(self.items.features)
        return F.normalize(self.item_tower(v), dim=-1)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        scores = self.user_vectors(users) @ self.item_vectors().T
        if self.config.kind == "two-tower":
            scores = scores / self.config.temperature
        else:
            scores = scores + self.items.bias
        return self.items.scatter(scores)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
