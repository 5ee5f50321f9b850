"""What structured pruning cuts: groups of units and the tensors they live in, and the cutting itself.

    from lab.compress.structure import Group, Structure, neurons, cut
    group = neurons(model, "net.0", "net.2")          # hidden units between two Linear layers
    cut(model, [group], [torch.tensor([0, 3, 5])])    # keep units 0, 3 and 5: smaller dense layers

Each model family says how its models shrink in its record (``ModelFamily.structure``): which
groups exist (heads, MLP neurons, conv channels), what the pruned ``model:`` section is, and
anything to do after the cut (a transformer's attention with fewer heads). ``lab.compress.prune``
scores the units and calls these; this module imports only torch, so the families can use it.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class Cut:
    """One tensor a group of units lives in: position ``i`` along ``dim`` belongs to unit ``unit_of[i]``."""

    module: str
    tensor: str
    dim: int
    unit_of: torch.Tensor


@dataclass
class Group:
    """Units (the heads of a block, the neurons of a layer, a conv's channels) kept or removed together."""

    name: str
    n: int
    cuts: list[Cut]


@dataclass(frozen=True)
class Structure:
    """How structured pruning shrinks one family's models."""

    groups: Callable[[nn.Module], list[Group]]
    """The groups of units that may go, in a fixed order."""
    shape: Callable[[nn.Module, list[int]], dict[str, Any]]
    """The pruned model's ``model:`` section, from the units kept per group (in ``groups`` order)."""
    finish: Callable[[nn.Module, list[Group], list[torch.Tensor]], None] | None = None
    """Work after the cut layers are in place (e.g. attention with fewer heads than the width implies)."""
    rebuild: Callable[[dict[str, Any]], tuple[dict[str, Any], Callable[[Group], int] | None]] | None = None
    """Loading: a pruned ``model:`` section -> (a section the family's config reads, and the units each
    group keeps when the model must be built in its original shape and cut again; None = build as is)."""
    importance: Callable[[nn.Module, list[Group], Any], list[torch.Tensor]] | None = None
    """Which units matter, from the data: ``(model, groups, DataModule)`` -> one score per unit and group (a
    recommender's items: how often each was chosen). None = the first-order Taylor estimate."""


def cuts(model: nn.Module, module: str, dim: int, unit_of: torch.Tensor,
         tensors: tuple[str, ...] = ("weight", "bias")) -> list[Cut]:
    """The ``tensors`` of ``module`` that exist, each cut along ``dim`` by ``unit_of``."""
    m = model.get_submodule(module)
    return [Cut(module, t, dim, unit_of) for t in tensors if getattr(m, t, None) is not None]


def neurons(model: nn.Module, first: str, second: str, spread: int = 1, kind: str = "neurons") -> Group:
    """Hidden units between two layers: rows of ``first`` (and its bias), columns of ``second``.

    ``spread`` > 1 when ``second`` reads each unit as several inputs (a flattened conv map).
    """
    n = model.get_submodule(first).weight.shape[0]
    unit_of = torch.arange(n * spread) // spread
    return Group(f"{first} {kind}", n, [*cuts(model, first, 0, torch.arange(n)),
                                        *cuts(model, second, 1, unit_of, ("weight",))])


def fix_shape(m: nn.Module) -> None:
    """Make a module's size attributes agree with its sliced tensors."""
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.Conv2d):
        m.out_channels, m.in_channels = m.weight.shape[:2]
    elif isinstance(m, nn.BatchNorm2d):
        m.num_features = m.weight.shape[0]


def cut(model: nn.Module, groups: list[Group], keep: list[torch.Tensor]) -> None:
    """Replace every cut module by a copy holding only the kept units (``keep[i]``: indices for ``groups[i]``)."""
    todo: dict[str, list[tuple[str, int, torch.Tensor]]] = defaultdict(list)
    for g, k in zip(groups, keep):
        for c in g.cuts:
            todo[c.module].append((c.tensor, c.dim, torch.isin(c.unit_of, k).nonzero().flatten()))
    for name, slices in todo.items():
        new = copy.deepcopy(model.get_submodule(name))
        for tensor, dim, positions in slices:
            t = getattr(new, tensor)
            kept = t.detach().index_select(dim, positions).clone()
            setattr(new, tensor, nn.Parameter(kept, t.requires_grad) if isinstance(t, nn.Parameter) else kept)
        fix_shape(new)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
