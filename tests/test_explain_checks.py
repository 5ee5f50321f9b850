"""lab.explain.checks: each check passes on a trained model and fails on a map that does not explain it.

The trained models are the digits CNN and a small character GPT, trained here (a few hundred
steps, seconds on 2 cores). Each check then gets what should fail it: completeness and the
deletion curve the maps of a randomised copy of the model (Integrated Gradients run on other
weights), model randomisation a "map" that ignores the weights altogether (an edge detector on
the digits, "the later the token, the more it matters" on the text) -- the two things Adebayo
et al. showed can pass for an explanation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lab.explain import checks
from lab.explain.attributions import Subject, attribute
from lab.families import family

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

GPT = {"model.n_layer": 2, "model.n_embd": 48, "model.n_head": 2, "model.block_size": 32,
       "optimizer.warmup_steps": 10, "trainer.max_steps": 300}
"""A character GPT trained long enough that its next token depends on the text (300 steps)."""
SAMPLES = 24
"""Test samples each check runs on, spread over the test split (neighbouring text windows are alike)."""


def _subject(train_tiny: Any, preset: str, overrides: dict[str, Any], steps: int) -> dict[str, Any]:
    module, dm, cfg = train_tiny(preset, overrides, steps)
    dm.setup("test")
    fam = family(cfg.model.name)
    if fam.explain.inputs == "tokens":
        baseline = float(dm.tokenizer.encode(" ")[0])
    else:
        baseline = -dm.mean / dm.std  # a black image
    subject = Subject.of(module.model, fam.explain, fam.task, baseline)
    data = dm.test_dataloader().dataset
    x = torch.stack([data[int(i)][0] for i in torch.linspace(0, len(data) - 1, SAMPLES).round()])  # spread out
    target = subject.predicted(x)
    maps, delta = attribute(subject, "integrated_gradients", x, target)
    other = Subject(checks.randomised(module.model, seed=3), subject.explain, subject.task, baseline)
    return {"subject": subject, "x": x, "target": target, "maps": maps, "delta": delta,
            "randomised_maps": attribute(other, "integrated_gradients", x, target)[0]}


@pytest.fixture(scope="module")
def cnn(train_tiny: Any) -> dict[str, Any]:
    return _subject(train_tiny, "digits-cnn", {}, 150)


@pytest.fixture(scope="module")
def gpt(train_tiny: Any) -> dict[str, Any]:
    return _subject(train_tiny, "gpt-nano", GPT, GPT["trainer.max_steps"])


@pytest.fixture(params=["cnn", "gpt"])
def trained(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(request.param)


def test_completeness_passes_on_the_trained_model_and_fails_for_a_randomised_models_maps(trained) -> None:
    s, x, target = trained["subject"], trained["x"], trained["target"]
    found = checks.completeness(s, x, target, trained["maps"], trained["delta"])
    assert found["passed"] and found["relative_error"] <= checks.COMPLETENESS_TOLERANCE
    # The convergence delta Captum reports is the same gap, sample by sample.
    gaps = np.array(found["sum_of_attributions"]) - np.array(found["output_difference"])
    assert np.allclose(gaps, found["convergence_delta"], atol=1e-4)
    wrong = checks.completeness(s, x, target, trained["randomised_maps"])
    assert not wrong["passed"] and wrong["relative_error"] > 10 * checks.COMPLETENESS_TOLERANCE


def test_model_randomisation_passes_on_the_trained_model_and_fails_for_a_map_that_ignores_it(trained) -> None:
    s, x, target = trained["subject"], trained["x"], trained["target"]
    where = checks.support(s, x)

    def explain_with(model: torch.nn.Module) -> torch.Tensor:
        return attribute(Subject(model, s.explain, s.task, s.baseline), "integrated_gradients", x, target)[0]

    found = checks.randomisation(explain_with, s.model, where, trained=trained["maps"])
    assert found["passed"] and found["rank_correlation"] < checks.RANDOMISATION_THRESHOLD
    # One figure per sample with something to rank (a window of blanks has nothing that differs from the baseline).
    assert len(found["per_sample"]) == int((where.reshape(len(x), -1).sum(1) >= checks.MIN_POSITIONS).sum()) > len(x) / 2
    if s.tokens:  # later tokens matter more, whatever the weights
        ignores = torch.arange(x.shape[1], dtype=torch.float32).expand(x.shape)
    else:
        ignores = checks.edge_detector(x)
    blind = checks.randomisation(lambda model: ignores, s.model, where)
    assert not blind["passed"] and blind["rank_correlation"] == pytest.approx(1.0)


def test_deletion_curve_passes_on_the_trained_model_and_fails_for_a_randomised_models_maps(trained) -> None:
    s, x, target = trained["subject"], trained["x"], trained["target"]
    found = checks.deletion(s, x, target, trained["maps"])
    assert found["passed"] and found["auc_attributed"] < found["auc_random"]
    assert len(found["curve_attributed"]) == checks.DELETION_STEPS + 1 == len(found["fractions"])
    # Everything removed: both orders end on the same input (all baseline), so at the same confidence.
    assert found["curve_attributed"][-1] == pytest.approx(found["curve_random"][-1], abs=1e-6)
    wrong = checks.deletion(s, x, target, trained["randomised_maps"])
    assert not wrong["passed"]
    assert wrong["auc_gap"] < found["auc_gap"] / 2


def test_run_checks_reports_every_method(cnn) -> None:
    s, x, target = cnn["subject"], cnn["x"][:4], cnn["target"][:4]
    report = checks.run_checks(s, x, target)
    assert set(report["randomisation"]) == set(report["deletion"]) == {"integrated_gradients", "saliency", "occlusion"}
    assert report["samples"] == 4 and isinstance(report["passed"], bool)
    assert "randomised_maps" not in report["randomisation"]["saliency"]  # the report stays plain data


def test_spearman_and_ties() -> None:
    assert checks.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert checks.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties take their average rank: [1, 2.5, 2.5, 4] against [1, 2, 3, 4].
    assert checks.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert checks.spearman([5, 5, 5], [1, 2, 3]) == 0.0  # no ranks to compare


def test_randomised_draws_every_weight_anew_and_leaves_the_model() -> None:
    from lab.models.vision import ViT, ViTConfig

    model = ViT(ViTConfig(n_layer=1, n_head=2, n_embd=16)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = checks.randomised(model, seed=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    changed = {k for k, v in twin.state_dict().items() if not torch.equal(v, before[k])}
    weights = {k for k, _ in model.named_parameters() if not k.endswith("bias") and ".ln" not in k and "ln_f" not in k}
    assert weights <= changed  # the CLS token and the positions too: built anew from the config
    again = checks.randomised(model, seed=0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in twin.state_dict().items())  # seeded
    assert not twin.training

    class Bare(torch.nn.Module):  # no config: each layer's own reset, and a bare parameter drawn N(0, 0.02²)
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.zeros(64))
            self.linear = torch.nn.Linear(4, 4)

    bare = Bare()
    fresh = checks.randomised(bare, seed=1)
    assert not torch.equal(fresh.linear.weight, bare.linear.weight) and 0.01 < float(fresh.scale.detach().std()) < 0.03
