"""lab.compress.artifacts: the one loader of module artifacts (lab explain --compressed, lab serve --artifact)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lab.checkpoints import load_module
from lab.compress import compress
from lab.compress.artifacts import MODULE_ARTIFACTS, load_artifact
from lab.errors import LabError
from lab.families import family_of

TINY_COMPRESS = {"max_batches": 2, "repeats": 1, "warmup": 0, "batch_sizes": (1,)}


def test_artifacts_that_are_not_modules_or_not_made_are_refused_in_one_line(tiny_gpt_run: Any) -> None:
    model = load_module(tiny_gpt_run, "best").model
    family = family_of(tiny_gpt_run.config)
    with pytest.raises(LabError, match="do not rebuild as a PyTorch module: choose one of int8-dynamic"):
        load_artifact(tiny_gpt_run, "onnx-int8", model, family)
    with pytest.raises(LabError, match=r"no distill artifact yet: run `lab compress .* --method distill` first"):
        load_artifact(tiny_gpt_run, "distill", model, family)
    assert set(MODULE_ARTIFACTS) == {"int8-dynamic", "prune", "prune-structured", "distill"}


@pytest.mark.parametrize("method,options", [("prune", {"sparsity": 0.5, "steps": 0}), ("int8-dynamic", {})])
def test_an_artifact_loads_as_the_compressed_model_and_leaves_the_original_alone(
        tiny_gpt_run: Any, method: str, options: dict[str, Any]) -> None:
    report = compress(tiny_gpt_run, method, **TINY_COMPRESS, **options)
    model = load_module(tiny_gpt_run, "best").model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    artifact = load_artifact(tiny_gpt_run, method, model, family_of(tiny_gpt_run.config))
    assert not artifact.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was compressed
    x = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        got, want = artifact(x), model(x)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert not torch.equal(got, want)  # it is the compressed model, not the original
    if method == "prune":  # half of the prunable weights are zero now, as the report says
        weight = dict(artifact.named_parameters())["transformer.h.0.mlp.c_fc.weight"]
        assert 0.3 < float((weight == 0).float().mean()) < 0.8
        assert report["method"] == "prune"
