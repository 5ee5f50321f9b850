"""Checks that an explanation is not noise: completeness, model randomisation, the deletion curve.

    from lab.explain.checks import completeness, deletion, randomisation, randomised, run_checks
    report = run_checks(subject, x, target)        # all three on a batch, as `lab explain --check` runs them
    report["passed"], report["completeness"]["relative_error"]     # the batch's pooled gap, a fraction

- **Completeness** (Sundararajan et al., 2017): Integrated Gradients' attributions of a sample
  add up to ``f(input) - f(baseline)``; passed when the batch's gaps total within
  ``COMPLETENESS_TOLERANCE`` (1%) of its differences' total (pooled: a sample whose output hardly
  moves from the baseline's would fail 1% of almost nothing on rounding alone); the worst sample's
  own gap is reported beside it. Captum's convergence delta is that gap, reported as it comes.
- **Model randomisation** (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"): re-initialise
  every weight and explain again. A map that explains the model must change; one that only
  reflects the input (an edge detector) stays the same. Passed when the mean Spearman rank
  correlation between the trained model's maps and the randomised model's is below
  ``RANDOMISATION_THRESHOLD``.
- **Deletion curve** (Samek et al., 2017; Petsiuk et al., 2018): remove inputs (set them to the
  baseline) from the most attributed down, and watch the explained output's confidence fall; do
  the same in random orders. Passed when the attributed order's area under the curve is lower
  than the random orders' by more than twice the standard error of the difference across
  samples. It measures faithfulness, not dependence on the weights: on a language model even a
  randomised model's map often ranks the last token (which the residual stream carries straight
  to the output) first, which alone beats random orders -- completeness and the randomisation
  check are what tell that map apart.

Each check takes maps or a way to make them, so a test can hand it the maps of a randomised
model, or an edge detector, and watch it fail (``tests/test_explain_checks.py``).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from lab.explain.attributions import ATTRIBUTIONS, Subject, attribute, pixel_map

COMPLETENESS_TOLERANCE = 0.01
"""Integrated Gradients' attributions must add up to ``f(input) - f(baseline)`` within 1% (the issue's bar)."""
RANDOMISATION_THRESHOLD = 0.6
"""The largest mean rank correlation (absolute values, on the inputs that differ from the baseline)
between a trained model's maps and its randomised copy's that still counts as "the maps changed".
Why 0.6: a map that ignores the weights (an edge detector, "the later the token the more it matters")
correlates at 1.0 with itself. Two unrelated models -- two random initialisations -- share 0.38-0.50
on the digits with Integrated Gradients, because both maps are multiplied by ``input - baseline``
(the ink's intensity), and about 0-0.15 with Saliency, Occlusion and on text (measured on the lab's
digits CNN and character GPT; each check reports this figure as ``unrelated_models``). 0.6 sits above
every unrelated pair measured and well below 1; at 0.6 nearly two thirds of the rank variance
(1 - 0.6²) has changed."""
DELETION_STEPS = 16
"""Points on the deletion curve: 0, 1/16, ..., all of the inputs removed."""
RANDOM_ORDERS = 10
"""Random deletion orders averaged per sample (the baseline the attributed order must beat)."""
MIN_POSITIONS = 3
"""Samples with fewer positions that differ from the baseline (a text of blanks) are left out of
randomisation and deletion: there is no order to compare."""


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two equally long arrays (ties get their average rank)."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64).ravel()), _ranks(np.asarray(b, dtype=np.float64).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else 0.0


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    for start, n in zip(first, counts):  # ties share the mean of their ranks
        if n > 1:
            ranks[order[start:start + n]] = ranks[order[start:start + n]].mean()
    return ranks


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same model with every weight drawn anew ("full randomisation"), in eval mode.

    The lab's models keep their config: the copy is built from it, so its weights come from the
    model's own initialisation -- the model as it was before training (a GPT's N(0, 0.02²) weights,
    its scaled residual projections). A model without one gets each layer's ``reset_parameters``
    (PyTorch's default initialisation), and parameters held directly by a module without it (a
    ViT's CLS token) N(0, 0.02²).
    """
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is not disturbed
        torch.manual_seed(seed)
        config = getattr(model, "config", None)
        if config is not None:
            return type(model)(config).eval()
        twin = copy.deepcopy(model)
        for module in twin.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for p in module.parameters(recurse=False):
                    nn.init.normal_(p, std=0.02)
    return twin.eval()


def completeness(subject: Subject, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                 delta: torch.Tensor | None = None) -> dict[str, Any]:
    """Do ``maps`` add up to ``f(x) - f(baseline)`` for ``subject``'s model?

    Judged on the batch: the gaps' total against the differences' total (a sample whose output
    hardly moves from the baseline's has nothing to attribute, and 1% of almost nothing would
    fail it on rounding alone); the worst sample's own relative gap is reported beside it.
    """
    with torch.no_grad():
        difference = subject.score(x, target) - subject.score(subject.baseline_like(x), target)
    total = maps.reshape(len(maps), -1).sum(1).to(difference.dtype)
    gap = (total - difference).abs()
    pooled = float(gap.sum() / difference.abs().sum().clamp(min=1e-9))
    worst = gap / difference.abs().clamp(min=1e-9)
    out = {"passed": pooled <= COMPLETENESS_TOLERANCE, "tolerance": COMPLETENESS_TOLERANCE,
           "relative_error": pooled, "worst_sample_relative_error": float(worst.max()),
           "sum_of_attributions": total.tolist(), "output_difference": difference.tolist()}
    if delta is not None:
        out["convergence_delta"] = [float(d) for d in delta.reshape(-1)]
    return out


def support(subject: Subject, x: torch.Tensor) -> torch.Tensor:
    """Per sample, the positions where the input differs from the baseline (``[B, ...]`` like ``pixel_map``).

    Elsewhere Integrated Gradients (which multiplies by ``input - baseline``) and occlusion (which
    swaps in the baseline) give exactly 0 for every model, so those positions say nothing about
    the model and would make any two maps look alike.
    """
    return pixel_map((x != subject.baseline_like(x)).float()) > 0


def randomisation(maps_of: Callable[[nn.Module], torch.Tensor], model: nn.Module, where: torch.Tensor,
                  seed: int = 0, trained: torch.Tensor | None = None) -> dict[str, Any]:
    """Do the maps change when the model's weights are re-initialised?

    ``maps_of(model)`` explains the fixed batch with a given model (the same targets for both).
    The rank correlation is taken per sample over the absolute values (Adebayo et al.'s main
    figure: a map whose signs flip but whose ranks stay has not changed what it points at), on
    the positions ``where`` the input differs from the baseline (``support``). For context the
    same figure between two independent randomisations is reported: what unrelated models share.
    """
    trained = maps_of(model) if trained is None else trained
    first, second = maps_of(randomised(model, seed)), maps_of(randomised(model, seed + 1))

    def rho(a: torch.Tensor, b: torch.Tensor) -> list[float]:
        a, b = pixel_map(a).abs(), pixel_map(b).abs()
        return [spearman(a[i][where[i]], b[i][where[i]]) for i in range(len(a)) if where[i].sum() >= MIN_POSITIONS]

    rhos = rho(trained, first)
    if not rhos:
        return {"passed": False, "threshold": RANDOMISATION_THRESHOLD, "rank_correlation": float("nan"),
                "per_sample": [], "randomised_maps": first,
                "note": f"no sample has {MIN_POSITIONS} or more inputs that differ from the baseline"}
    mean = float(np.mean(rhos))
    return {"passed": mean < RANDOMISATION_THRESHOLD, "threshold": RANDOMISATION_THRESHOLD,
            "rank_correlation": mean, "per_sample": rhos, "unrelated_models": float(np.mean(rho(first, second))),
            "randomised_maps": first}


def _positions(subject: Subject, x: torch.Tensor) -> list[torch.Tensor]:
    """Per sample, the flat positions deletion may remove: where the input differs from the baseline
    (removing the rest changes nothing, and random orders would waste their steps on it)."""
    where = support(subject, x).reshape(len(x), -1)
    return [torch.nonzero(row).flatten() for row in where]


def _delete(subject: Subject, x: torch.Tensor, gone: torch.Tensor) -> torch.Tensor:
    """``x`` (one sample) with the flat positions ``gone`` set to the baseline (every channel of a pixel)."""
    out = x.clone()
    base = subject.baseline_like(x)
    if subject.explain.inputs == "image":
        flat, fill = out.reshape(out.shape[0], -1), base.reshape(base.shape[0], -1)
        flat[:, gone] = fill[:, gone]
    else:
        out.reshape(-1)[gone] = base.reshape(-1)[gone]
    return out


def _curve(subject: Subject, x: torch.Tensor, target: torch.Tensor, orders: list[torch.Tensor]) -> np.ndarray:
    """Confidence after removing the first 0, 1/16, ... of each order: ``[len(orders), DELETION_STEPS + 1]``."""
    n = len(orders[0])
    counts = [math.ceil(n * k / DELETION_STEPS) for k in range(DELETION_STEPS + 1)]
    batch = torch.stack([_delete(subject, x, order[:c]) for order in orders for c in counts])
    with torch.no_grad():
        conf = subject.confidence(batch, target.expand(len(batch)))
    if subject.task == "regressor":  # the share of the prediction (away from the baseline's) still there
        with torch.no_grad():
            full = float(subject.confidence(x[None], target.reshape(1)))
            empty = float(subject.confidence(subject.baseline_like(x)[None], target.reshape(1)))
        span = full - empty
        conf = (conf - empty) / (span if abs(span) > 1e-9 else 1e-9)
    return conf.reshape(len(orders), len(counts)).numpy()


def _area(curve: np.ndarray) -> float:
    """Area under a deletion curve over the removed fraction 0..1 (trapezoids)."""
    return float((curve[:-1] + curve[1:]).sum() / 2 / (len(curve) - 1))


def deletion(subject: Subject, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
             seed: int = 0) -> dict[str, Any]:
    """Does removing the most-attributed inputs first drop the confidence faster than random orders?

    Passed when, across samples, the attributed order's area under the curve is lower than the
    random orders' by more than twice its standard error. The reverse order (least attributed
    first) is measured too, for the picture: a faithful map keeps the confidence up longest there.
    """
    gen = torch.Generator().manual_seed(seed)
    ranked, reversed_, randoms, gaps = [], [], [], []
    flat = pixel_map(maps).reshape(len(maps), -1)
    for i, where in enumerate(_positions(subject, x)):
        if len(where) < MIN_POSITIONS:
            continue
        order = where[flat[i, where].argsort(descending=True, stable=True)]
        shuffles = [where[torch.randperm(len(where), generator=gen)] for _ in range(RANDOM_ORDERS)]
        curves = _curve(subject, x[i], target[i], [order, order.flip(0), *shuffles])
        ranked.append(curves[0])
        reversed_.append(curves[1])
        randoms.append(curves[2:].mean(0))
        gaps.append(_area(randoms[-1]) - _area(curves[0]))
    if len(gaps) < 2:
        return {"passed": False, "samples_used": len(gaps), "auc_gap": float("nan"), "standard_error": float("nan"),
                "note": f"fewer than 2 samples with {MIN_POSITIONS} or more inputs that differ from the baseline"}
    gap, se = float(np.mean(gaps)), float(np.std(gaps, ddof=1) / math.sqrt(len(gaps)))
    return {"passed": gap > 2 * se and gap > 0, "samples_used": len(gaps),
            "auc_gap": gap, "standard_error": se,
            "auc_attributed": float(np.mean([_area(c) for c in ranked])),
            "auc_reversed": float(np.mean([_area(c) for c in reversed_])),
            "auc_random": float(np.mean([_area(c) for c in randoms])),
            "fractions": [k / DELETION_STEPS for k in range(DELETION_STEPS + 1)],
            "curve_attributed": np.mean(ranked, 0).tolist(), "curve_reversed": np.mean(reversed_, 0).tolist(),
            "curve_random": np.mean(randoms, 0).tolist()}


def edge_detector(x: torch.Tensor) -> torch.Tensor:
    """A "map" that ignores the model: the Sobel gradient magnitude of each image ``[B, C, H, W]``.

    What Adebayo et al. found some saliency methods to be in disguise; the randomisation check
    exists to catch it (it fails it: the map is the same whatever the weights).
    """
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.T])[:, None]
    grey = x.float().sum(1, keepdim=True)
    g = torch.nn.functional.conv2d(grey, kernels, padding=1)
    return g.pow(2).sum(1, keepdim=True).sqrt().expand_as(x).clone()


def run_checks(subject: Subject, x: torch.Tensor, target: torch.Tensor, methods: tuple[str, ...] = (),
               seed: int = 0) -> dict[str, Any]:
    """The three checks on a batch: completeness of Integrated Gradients, then randomisation and
    deletion for each attribution method in ``methods`` (default: the family's). ``passed``: all three
    pass for Integrated Gradients, the method the family record lists first."""
    methods = tuple(m for m in methods if m in ATTRIBUTIONS) or \
        tuple(m for m in subject.explain.methods if m in ATTRIBUTIONS)
    ig, delta = attribute(subject, "integrated_gradients", x, target)
    out: dict[str, Any] = {"samples": len(x), "completeness": completeness(subject, x, target, ig, delta),
                           "randomisation": {}, "deletion": {}}
    for method in methods:
        maps = ig if method == "integrated_gradients" else attribute(subject, method, x, target)[0]
        explain_with = (lambda model, m=method: attribute(Subject(model, subject.explain, subject.task,
                                                                  subject.baseline), m, x, target)[0])
        rand = randomisation(explain_with, subject.model, support(subject, x), seed, trained=maps)
        rand.pop("randomised_maps")
        out["randomisation"][method] = rand
        out["deletion"][method] = deletion(subject, x, target, maps, seed)
    # The verdict: Integrated Gradients' three checks, or with it not asked for, completeness and every method's two.
    judged = ["integrated_gradients"] if "integrated_gradients" in methods else list(methods)
    out["passed"] = bool(out["completeness"]["passed"] and all(out["randomisation"][m]["passed"]
                                                               and out["deletion"][m]["passed"] for m in judged))
    return out


__all__ = ["COMPLETENESS_TOLERANCE", "DELETION_STEPS", "RANDOMISATION_THRESHOLD", "completeness", "deletion",
           "edge_detector", "randomisation", "randomised", "run_checks", "spearman"]
