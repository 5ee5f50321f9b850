"""The recommender family: matrix factorization (BPR) and a two-tower model (in-batch negatives), task "ranking".

    from lab.families.recommender import FAMILY
    FAMILY.task, FAMILY.data, FAMILY.metric            # "ranking", ("ratings",), "val/ndcg_at_10"
    lab fit --config recommender-mf                    # the synthetic world, a few CPU minutes
    lab fit --config recommender-two-tower --data.path ml-100k.zip

Its own facts: the user and item counts (and the two-tower's item features) come from the
data and are recorded in the run's config; the features themselves are a buffer of the model,
so a checkpoint carries them. Compression: ``int8-dynamic`` stores both embedding tables in
int8 with a scale and offset per row (``torch.ao``'s weight-only quantized ``Embedding``; the
two-tower's Linear layers get dynamic int8), and ``prune-structured`` removes the items chosen
least often in training (``--sparsity 0.5``: the rarer half), whose rows, biases and
features leave the table; the pruned model scores them ``PRUNED``. Distillation narrows the
vectors (``dim``) and towers (``hidden``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from lab.compress.structure import Group, Structure, cuts
from lab.data.ratings import RatingsDataModule
from lab.errors import ConfigError, LabError
from lab.families.record import ModelFamily, Servable, replace_config
from lab.models.recommender import Recommender, RecommenderConfig
from lab.ranking import Ranker, bpr_loss

DATA_FIELDS = ("n_users", "n_items")
"""What the data decides and the model config records."""


def datamodule(cfg: Any) -> RatingsDataModule:
    """The choices, with one (user, chosen, negative) sample per micro-batch sample of the whole run."""
    t = cfg.trainer
    ranks = (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes  # each rank reads its share
    samples = t.max_steps * t.accumulate_grad_batches * cfg.data.batch_size * ranks
    return RatingsDataModule(cfg.data, seed=cfg.seed, num_train_samples=samples)


def _data_sizes(dm: Any) -> dict[str, int]:
    return {"n_users": int(dm.n_users), "n_items": int(dm.n_items), "item_features": int(dm.item_features.shape[1])}


def complete(c: RecommenderConfig, dm: Any) -> RecommenderConfig:
    """What the data decides: users, items, item features (a copy); a model config that disagrees is refused."""
    if not getattr(dm, "n_items", 0):
        if c.n_users is None or c.n_items is None:
            raise LabError("model.n_users / model.n_items are null: give them, or build the module with its DataModule")
        return c
    sizes = _data_sizes(dm)
    changes = {}
    for field, value in sizes.items():
        given = getattr(c, field)
        if given is None:
            changes[field] = value
        elif given != value:
            raise ConfigError(f"model.{field}", given, f"{value} (what the data has)",
                              "leave it null to take it from the data")
    return replace_config(c, **changes) if changes else c


def module(cfg: Any, model: Recommender, dm: Any) -> Ranker:
    features = model.items.features
    if dm is not None and getattr(dm, "n_items", 0) and features.numel():
        features.copy_(torch.as_tensor(dm.item_features))  # a checkpoint carries them from here on
    counts = dm.item_counts if dm is not None and getattr(dm, "n_items", 0) else None
    return Ranker(model, cfg.optimizer, cfg.trainer.max_steps, kind=model.config.kind, item_counts=counts)


def example(c: RecommenderConfig, n: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random users and (chosen, negative) item pairs: a training batch."""
    return (torch.randint(0, c.n_users, (n,), generator=gen), torch.randint(0, c.n_items, (n, 2), generator=gen))


def check(cfg: Any) -> None:
    """A synthetic world's size is known before any data is made: the model must agree with it."""
    d, m = cfg.data, cfg.model
    if d.synthetic:
        for field in DATA_FIELDS:
            if getattr(m, field) not in (None, getattr(d, field)):
                raise ConfigError(f"model.{field}", getattr(m, field), f"data.{field} = {getattr(d, field)}",
                                  "leave it null to take it from the data")


def plan_shape(cfg: Any) -> tuple[RecommenderConfig, str | None]:
    """The model's tables as the data will size them: the synthetic world's from its config, a file's by reading it."""
    m, d = cfg.model, cfg.data
    if m.n_users is not None and m.n_items is not None and m.item_features is not None:
        return m, None
    if d.synthetic:
        sizes = {"n_users": d.n_users, "n_items": d.n_items, "item_features": d.genres}
        note = None
    else:
        dm = RatingsDataModule(d, seed=cfg.seed, num_train_samples=1)
        dm.prepare_data()
        sizes = {"n_users": dm.data.n_users, "n_items": dm.data.n_items,
                 "item_features": int(dm.data.item_features.shape[1])}
        note = f"users and items counted in {d.path or d.url}"
    return replace_config(m, **{k: v if getattr(m, k) is None else getattr(m, k) for k, v in sizes.items()}), note


def narrow(c: RecommenderConfig, scale: float) -> dict[str, Any]:
    return {"dim": max(1, round(c.dim * scale)), "hidden": max(1, round(c.hidden * scale))}


# --------------------------------------------------------------------------- item pruning


def item_rows(model: nn.Module) -> list[Group]:
    """One group, the item table's rows: each row's embedding, bias (mf), features and item id go together."""
    n = len(model.items.kept)
    rows = torch.arange(n)
    return [Group("items", n, [*cuts(model, "items.embedding", 0, rows, ("weight",)),
                               *cuts(model, "items", 0, rows, ("bias", "features", "kept"))])]


def chosen_counts(model: nn.Module, groups: list[Group], dm: Any) -> list[torch.Tensor]:
    """How often each row's item was chosen in training: the rarely chosen items go first."""
    return [torch.as_tensor(dm.item_counts, dtype=torch.float64)[model.items.kept].float()]


def fewer_items(model: nn.Module, groups: list[Group], keep: list[torch.Tensor]) -> None:
    model.items.embedding.num_embeddings = len(keep[0])


def pruned_section(model: nn.Module, counts: list[int]) -> dict[str, Any]:
    """The config, and how many item rows are left (``kept_items``: the config's ``n_items`` stays the catalogue)."""
    return {**dataclasses.asdict(model.config), "kept_items": counts[0]}


def rebuild(section: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    section = dict(section)
    kept = section.pop("kept_items", None)
    return section, (lambda group: kept) if kept is not None else None


FAMILY = ModelFamily(
    name="recommender", config=RecommenderConfig, model=Recommender, data=("ratings",), task="ranking",
    module=module, example=example, loss=bpr_loss, metric="val/ndcg_at_10", mode="max", datamodule=datamodule,
    complete=complete, check=check, plan_shape=plan_shape, narrow=narrow, int8_targets=(nn.Embedding, nn.Linear),
    structure=Structure(groups=item_rows, shape=pruned_section, finish=fewer_items, rebuild=rebuild,
                        importance=chosen_counts),
    serve=Servable("user", "id", bound="n_users"),
    describe="A recommender: user ids [batch] -> a score for every item [batch, n_items] (higher = recommend first)",
)
