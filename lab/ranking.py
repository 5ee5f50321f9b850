"""Ranking, the recommenders' task kind: its losses, metrics, baselines, LightningModule and a user's top-k.

    from lab.ranking import Ranker, quality, top_k, example_rows
    q = quality(model, dm, "test")          # what `lab evaluate` reports for a recommender
    q["ndcg_at_10"], q["popularity_ndcg_at_10"], q["ndcg_vs_popularity"], q["coverage_at_10"]
    rec = top_k(model, dm, user=7)           # the user's top 10 beside what they chose before and next
    example_rows(q, user=7)                  # the same from an eval report (the dashboard's per-user table)

Batches (``lab.data.ratings``): ``x`` is user ids ``[B]``; in evaluation ``y[:, 0]`` is the item
the user chose next (held out) and ``y[:, 1:]`` the items chosen before (padded with -1). A
recommender does not offer what the user already has, so those are left out of the ranking.

Per user, the held-out item's **rank** is how many other items (not yet chosen) score above it,
ties counted against it (a model that scores everything alike ranks it last, not first).
With one held-out item per user (leave-last-out):

- ``recall_at_10``: share of users whose held-out item is in their top 10 (the hit rate);
- ``ndcg_at_10``: mean of ``1 / log2(rank + 2)`` over those hits (0 otherwise): a hit at the
  top counts 1, at place 10 counts 0.29;
- ``coverage_at_10``: share of the catalogue that appears in anybody's top 10 (a model that
  recommends the same few hits to all has low coverage);
- ``loss``: cross-entropy of the held-out item under a softmax over the items not yet chosen.

The same evaluation ranks the same users by two baselines, with the same exclusions:
**popularity** (how often each item was chosen in the train split; ties broken at random,
seeded) and **random** scores (seeded); on the synthetic world also by the **oracle**, the planted
preferences themselves (``dm.truth``): the best any model can do. ``ndcg_vs_popularity`` is
the model's NDCG over the popularity ranking's: above 1 the model knows more than what is popular.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from lab.cost import fixed_threads
from lab.errors import LabError
from lab.models.recommender import PRUNED
from lab.modules import LabModule
from lab.optim import OptimizerConfig

K = 10
"""The length of a recommendation list: the ``@10`` of every metric."""
PRIMARY = (f"ndcg_at_{K}", True)
"""The figure compression deltas use, and that higher is better."""
SCALARS = ("loss", f"recall_at_{K}", f"ndcg_at_{K}", f"coverage_at_{K}", f"popularity_ndcg_at_{K}",
           f"random_ndcg_at_{K}", "ndcg_vs_popularity")
"""The flat figures a report shows (``lab.evaluate.scalar_figures``)."""
BASELINES = ("popularity", "random")
EXAMPLES = 20
"""Users whose top 10 an evaluation report keeps (the first of the split), for the Run page."""


# --------------------------------------------------------------------------- training losses


def bpr_loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BPR (Rendle et al., 2009): ``-log sigmoid(s(chosen) - s(negative))`` per (user, chosen, negative) row.

    ``scores`` [B, n_items]; ``y`` [B, 2] (chosen, negative). Rows whose chosen item was pruned
    away (scored ``PRUNED``) teach nothing and are left out.
    """
    pair = scores.gather(1, y[:, :2])
    keep = (pair[:, 0] > PRUNED).float()
    return (-F.logsigmoid(pair[:, 0] - pair[:, 1]) * keep).sum() / keep.sum().clamp(min=1)


def in_batch_loss(scores: torch.Tensor, y: torch.Tensor, log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the batch's chosen items (in-batch negatives): each user's own choice against the others'.

    Another user's choice of the *same* item is no negative, so it is masked out. The batch's
    items are a sample that favours popular items (each comes in as often as it was chosen):
    uncorrected, the softmax learns to push popular items down. ``log_q`` (log of each item's
    share of the choices) is subtracted from every logit, which makes the sampled softmax an
    estimate of the softmax over all items (Yi et al., 2019: the logQ correction).
    """
    pos = y[:, 0]
    logits = scores[:, pos]  # [B, B]: user i against the item every user of the batch chose
    if log_q is not None:
        logits = logits - log_q[pos][None, :]
    eye = torch.eye(len(pos), dtype=torch.bool, device=pos.device)
    logits = logits.masked_fill((pos[None, :] == pos[:, None]) & ~eye, float("-inf"))
    keep = (logits.diagonal() > PRUNED).float()
    ce = F.cross_entropy(logits, torch.arange(len(pos), device=pos.device), reduction="none")
    return (ce * keep).sum() / keep.sum().clamp(min=1)


# --------------------------------------------------------------------------- metrics


def ranks(scores: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rank of each held-out item [B], the scores with the seen items at -inf) for an evaluation batch."""
    scores = scores.float().clone()
    seen = y[:, 1:]
    rows = torch.arange(len(y), device=y.device).unsqueeze(1).expand_as(seen)
    mask = seen >= 0
    scores[rows[mask], seen[mask]] = float("-inf")
    target = scores.gather(1, y[:, :1])
    rank = (scores > target).sum(1) + (scores == target).sum(1) - 1  # ties count against the held-out item
    return rank, scores


def held_out_loss(masked: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-user cross-entropy of the held-out item among the items not yet chosen [B]."""
    return torch.logsumexp(masked, dim=1) - masked.gather(1, y[:, :1]).squeeze(1)


def hits(rank: torch.Tensor, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """(hit [B] as 0/1, NDCG [B]) at ``k`` from ranks."""
    hit = (rank < k).float()
    return hit, hit / torch.log2(rank.float() + 2)


class _Tally:
    """Running sums of one ranker's figures over the batches of a split."""

    def __init__(self, n_items: int) -> None:
        self.hit = self.ndcg = self.loss = 0.0
        self.users = 0
        self.covered = torch.zeros(n_items, dtype=torch.bool)

    def add(self, scores: torch.Tensor, y: torch.Tensor, with_loss: bool = True) -> torch.Tensor:
        rank, masked = ranks(scores, y)
        hit, ndcg = hits(rank)
        self.hit += float(hit.double().sum())
        self.ndcg += float(ndcg.double().sum())
        if with_loss:
            self.loss += float(held_out_loss(masked, y).double().sum())
        self.users += len(y)
        top = masked.topk(min(K, masked.shape[1]), dim=1).indices
        self.covered[top.flatten()] = True
        return top

    def figures(self) -> dict[str, float]:
        n = max(self.users, 1)
        return {"loss": self.loss / n, f"recall_at_{K}": self.hit / n, f"ndcg_at_{K}": self.ndcg / n,
                f"coverage_at_{K}": float(self.covered.double().mean())}


def quality(predict: Callable[[torch.Tensor], torch.Tensor], dm: Any, split: str, max_batches: int | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """The model's ranking figures on ``split`` beside the popularity and random baselines' (see the module doc).

    Deterministic: sequential batches, sums in float64, seeded tie-breaks and random scores.
    """
    popularity = torch.as_tensor(dm.item_counts, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    truth = torch.as_tensor(dm.truth) if getattr(dm, "truth", None) is not None else None
    baseline_names = (*BASELINES, "oracle") if truth is not None else BASELINES
    tallies = {name: _Tally(dm.n_items) for name in ("model", *baseline_names)}
    examples: list[dict[str, Any]] = []
    batches = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    with fixed_threads(threads), torch.inference_mode():
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            top = tallies["model"].add(torch.as_tensor(predict(x)), y)
            # Popularity: counts are whole numbers; a jitter below 1 only breaks their ties, at random.
            base = popularity.expand(len(y), -1)
            tallies["popularity"].add(base + 0.5 * torch.rand(base.shape, generator=gen), y, with_loss=False)
            tallies["random"].add(torch.rand(base.shape, generator=gen), y, with_loss=False)
            if truth is not None:  # the synthetic world's planted preferences: the best any model can do
                tallies["oracle"].add(truth[x], y, with_loss=False)
            examples += [{"user": int(u), "held_out": int(t), "top": r.tolist()}
                         for u, t, r in zip(x, y[:, 0], top)][: EXAMPLES - len(examples)]
    if tallies["model"].users == 0:
        raise LabError(f"the {split} split is empty: nothing to evaluate")
    q: dict[str, Any] = tallies["model"].figures()
    baselines = {name: tallies[name].figures() for name in baseline_names}
    for name in baseline_names:
        del baselines[name]["loss"]  # the baselines' scores are no distribution
        q[f"{name}_ndcg_at_{K}"] = baselines[name][f"ndcg_at_{K}"]
    pop = q[f"popularity_ndcg_at_{K}"]
    q["ndcg_vs_popularity"] = q[f"ndcg_at_{K}"] / pop if pop > 0 else math.inf
    for example in examples:
        example["held_out_name"] = dm.item_name(example["held_out"])
        example["top_names"] = [dm.item_name(item) for item in example["top"]]
    name, higher = PRIMARY
    q.update(k=K, users=tallies["model"].users, baselines=baselines, examples=examples,
             primary={"name": name, "value": q[name], "higher_is_better": higher}, split=split)
    return q


# --------------------------------------------------------------------------- one user's recommendations


def top_k(model: Callable[[torch.Tensor], torch.Tensor], dm: Any, user: int, split: str = "test",
          k: int = K) -> dict[str, Any]:
    """``user``'s top ``k`` (leaving out what they chose before ``split``'s held-out item) and where that item ranks.

    ``model`` is any user ids -> scores function (a model, or ``popularity_scores(dm)``).
    """
    if not 0 <= int(user) < dm.n_users:
        raise LabError(f"user {user} is not in the data: give a user id in [0, {dm.n_users - 1}]")
    seen = torch.as_tensor(dm.history(user, split), dtype=torch.long)
    held = dm.held_out(user, split)
    y = torch.cat([torch.tensor([held if held is not None else 0]), seen])[None, :]
    with torch.inference_mode():
        rank, masked = ranks(torch.as_tensor(model(torch.tensor([int(user)]))), y)
    scores, items = masked[0].topk(k)
    return {"user": int(user), "split": split, "history": [int(i) for i in seen],
            "held_out": held, "held_out_rank": int(rank[0]) if held is not None else None,
            "top": [{"rank": r + 1, "item": int(i), "name": dm.item_name(int(i)), "score": float(s),
                     "held_out": int(i) == held} for r, (i, s) in enumerate(zip(items, scores))]}


def popularity_scores(dm: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The popularity baseline as a model: every user gets the train-split counts."""
    counts = torch.as_tensor(dm.item_counts, dtype=torch.float32)
    return lambda users: counts.expand(len(users), -1)


def example_rows(q: dict[str, Any], user: int) -> list[dict[str, Any]]:
    """One user's top 10 from an evaluation report's ``examples`` (``users_with_examples`` lists them)."""
    found = next((e for e in _examples(q) if e["user"] == user), None)
    if found is None:
        raise LabError(f"the report has no top-{K} list for user {user}: pick one of {users_with_examples(q)}")
    names = found.get("top_names")
    names = names if isinstance(names, list) and len(names) == len(found["top"]) else found["top"]
    return [{"rank": r + 1, "item": item, "name": str(name), "held out (chosen next)": item == found.get("held_out")}
            for r, (item, name) in enumerate(zip(found["top"], names))]


def users_with_examples(q: Any) -> list[int]:
    """The users whose top-10 list a report keeps ([] for a report of another kind, or a damaged one)."""
    return [e["user"] for e in _examples(q)]


def _examples(q: Any) -> list[dict[str, Any]]:
    """The well-formed entries of a report's ``examples`` (it is read from a run's files)."""
    found = q.get("examples") if isinstance(q, dict) else None
    return [e for e in found or [] if isinstance(e, dict) and isinstance(e.get("user"), int)
            and isinstance(e.get("top"), list)] if isinstance(found, list) else []


# --------------------------------------------------------------------------- the LightningModule


class Ranker(LabModule):
    """Trains a recommender with its kind's loss; validates by NDCG@10 and recall@10 of the held-out items.

    ``item_counts``: how often each item was chosen in training (the data's), for the two-tower
    loss's logQ correction; kept in the checkpoint (``log_q``), so a loaded module fine-tunes alike.
    """

    def __init__(self, model: torch.nn.Module, optimizer: OptimizerConfig | None = None, max_steps: int = 1000,
                 kind: str = "mf", item_counts: Any = None) -> None:
        super().__init__(model, optimizer, max_steps)
        self.kind = kind
        n = model.config.n_items
        counts = torch.ones(n) if item_counts is None else torch.as_tensor(item_counts, dtype=torch.float32)
        self.register_buffer("log_q", torch.log(counts.clamp(min=1) / counts.clamp(min=1).sum()))

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The training loss of this model's kind: BPR for mf, the corrected in-batch softmax for two-tower."""
        return bpr_loss(scores, y) if self.kind == "mf" else in_batch_loss(scores, y, self.log_q)

    def compute(self, batch: Any, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        scores = self.model(x)
        if stage == "train":
            return self.loss(scores, y), {}
        # Validation and test: the held-out item's cross-entropy is the loss (best.ckpt keeps its
        # lowest); the ranking figures are per-user means, which Lightning averages over batches.
        rank, masked = ranks(scores, y)
        hit, ndcg = hits(rank)
        return held_out_loss(masked, y).mean(), {f"recall_at_{K}": hit.mean(), f"ndcg_at_{K}": ndcg.mean()}

