"""Did compression change what the model looks at? The same explanation for a run and its artifact.

    from lab.compress.artifacts import load_artifact
    from lab.explain.compare import compare
    model = load_artifact(run, "int8-dynamic", module.model, family)   # the artifact as an nn.Module
    result = compare(subject, artifact_subject, x, target)             # maps of both, rank correlation

Which method: Occlusion, because it needs no gradients -- an int8 model has none (its quantized
kernels have no backward), and a comparison must use the same method on both sides. Both maps
explain the original's predicted output, so they answer the same question. The figure is
Spearman's rank correlation of the two maps over the positions where the input differs from the
baseline (``lab.explain.checks.support``): 1 = the same order of importance, 0 = unrelated.

Artifacts that rebuild as a PyTorch module (``lab.compress.artifacts``) are explained:
``int8-dynamic`` (torch.ao backend), ``prune``, ``prune-structured`` and ``distill``. ONNX and
AOTInductor artifacts run outside PyTorch's modules and are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from lab.compress.artifacts import MODULE_ARTIFACTS, artifact_file
from lab.errors import LabError
from lab.explain.attributions import Subject, attribute, pixel_map

COMPARABLE = MODULE_ARTIFACTS
"""Compressed artifacts ``lab explain --compressed`` can explain beside their original."""
METHOD = "occlusion"
"""The one method both sides run (no gradients needed)."""


def check_artifact(run: Any, method: str) -> None:
    """Refuse, before any work, a method that cannot be compared or an artifact not made yet."""
    if method not in COMPARABLE:
        raise LabError(f"--compressed {method}: choose one of {', '.join(COMPARABLE)} (artifacts that rebuild as a "
                       "PyTorch module; ONNX and AOTInductor ones run outside it)")
    artifact_file(run, method)


def compare(original: Subject, artifact: Subject, x: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Occlusion maps of one input for both models (the original's target) and their rank correlation."""
    from lab.explain.checks import spearman, support

    left = attribute(original, METHOD, x, target)[0]
    right = attribute(artifact, METHOD, x, target)[0]
    where = support(original, x)[0]
    rho = spearman(pixel_map(left)[0][where], pixel_map(right)[0][where])
    with torch.no_grad():
        predicted = int(artifact.predicted(x)[0])
        confidence = float(artifact.confidence(x, target)[0])
    return {"method": METHOD, "rank_correlation": rho, "original_map": left[0], "artifact_map": right[0],
            "artifact_predicts": predicted, "artifact_confidence": confidence,
            "same_prediction": predicted == int(original.predicted(x)[0])}


__all__ = ["COMPARABLE", "check_artifact", "compare"]
