"""Distillation: the loss, the derived student's size, and a student reported next to its baseline."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model

from lab.compress.distill import DistillationModule, _count, derive_student, distill, distillation_loss
from lab.config import from_dict, load_config, read_yaml
from lab.errors import ConfigError, LabError
from lab.families import build_model, build_module
from lab.train import train_module



pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt(trained_gpt):
    return trained_gpt


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def test_kl_term_is_zero_when_the_student_is_the_teacher() -> None:
    logits, y = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    loss, soft, hard = distillation_loss(logits, logits.clone(), y, _ce, temperature=2.0, alpha=1.0)
    assert abs(float(soft)) < 1e-6 and abs(float(loss)) < 1e-6 and float(hard) > 0


def test_alpha_zero_is_exactly_the_hard_label_loss() -> None:
    student, teacher, y = torch.randn(3, 5, 11), torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    loss, soft, _ = distillation_loss(student, teacher, y, _ce, temperature=3.0, alpha=0.0)
    assert float(soft) > 0 and torch.equal(loss, _ce(student, y))


def test_soft_term_is_per_token_kl_times_t_squared() -> None:
    student, teacher, y = torch.randn(2, 4, 7), torch.randn(2, 4, 7), torch.randint(0, 7, (2, 4))
    t = 2.0
    p = torch.softmax(teacher / t, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    loss, soft, hard = distillation_loss(student, teacher, y, _ce, temperature=t, alpha=0.25)
    torch.testing.assert_close(soft, kl)
    torch.testing.assert_close(loss, 0.25 * kl + 0.75 * hard)


def test_regression_soft_target_is_the_teachers_output() -> None:
    student, teacher, y = torch.randn(8, 1), torch.randn(8, 1), torch.randn(8, 1)
    _, soft, hard = distillation_loss(student, teacher, y, F.mse_loss, alpha=0.5, soft="mse")
    torch.testing.assert_close(soft, F.mse_loss(student, teacher))
    torch.testing.assert_close(hard, F.mse_loss(student, y))


@pytest.mark.parametrize("preset", ["gpt-nano", "gpt2-124m", "digits-cnn", "digits-vit", "seed-mlp"])
def test_derived_student_has_at_most_half_the_parameters(preset: str) -> None:
    model_cfg = load_config(preset).model
    if getattr(model_cfg, "vocab_size", 1) is None:
        model_cfg.vocab_size = 65
    overrides = derive_student(model_cfg)
    student = dataclasses.replace(model_cfg, **overrides)
    assert _count(student) <= 0.5 * _count(model_cfg)
    if hasattr(student, "n_head"):
        assert student.n_layer == max(1, model_cfg.n_layer // 2) and student.n_embd % student.n_head == 0


def test_teacher_stays_frozen_and_in_eval_mode(gpt) -> None:
    module, dm, cfg = gpt
    student = build_module(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layer=1)), dm)
    teacher = build_model(module.model.config)
    teacher.load_state_dict(module.model.state_dict())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = DistillationModule(student, teacher).train()
    assert d.training and student.model.training and not teacher.training
    train_module(d.train(), dm, 5)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distill_gpt_reports_student_next_to_baseline(gpt, tmp_path: Path) -> None:
    module, dm, cfg = gpt
    art = distill(module, dm, cfg, tmp_path, steps=30)
    n = art.notes
    assert n["student_params"] == art.params <= 0.5 * n["teacher_params"]
    losses = n["val_loss"]
    assert set(losses) == {"teacher", "student", "baseline_student"}
    assert all(math.isfinite(v) for v in losses.values())
    assert n["baseline_student"]["val_loss"] == losses["baseline_student"] != losses["student"]
    assert n["distillation_gain"] == pytest.approx(losses["baseline_student"] - losses["student"])
    # The student's files are a config the lab validates and the weights that go with it.
    saved = from_dict(read_yaml(tmp_path / "config.yaml"))
    assert saved.model.n_layer == 1 and saved.model.n_embd == n["student_config"]["n_embd"]
    reloaded = build_model(saved.model).eval()
    load_model(reloaded, str(tmp_path / "model.safetensors"))
    x = next(iter(dm.val_dataloader()))[0]
    with torch.inference_mode():
        assert torch.equal(reloaded(x), art.predict(x))
        assert art.predict(x).shape == module.model(x).shape
    assert all(p.requires_grad for p in module.model.parameters())  # the caller's model is untouched


@pytest.mark.parametrize("preset, overrides", [
    ("digits-cnn", {"trainer.max_steps": 30}),
    ("seed-mlp", {"trainer.max_steps": 30, "model.hidden": [32]}),
])
def test_distill_classifier_and_regressor(preset: str, overrides: dict, tmp_path: Path, train_tiny) -> None:
    module, dm, cfg = train_tiny(preset, overrides, steps=30)
    art = distill(module, dm, cfg, tmp_path, steps=15, temperature=4.0, alpha=0.7)
    assert art.params <= 0.5 * art.notes["teacher_params"]
    assert all(math.isfinite(v) for v in art.notes["val_loss"].values())
    assert art.notes["soft_target"].startswith("MSE" if preset == "seed-mlp" else "KL")


def test_bad_options_are_refused(gpt, tmp_path: Path) -> None:
    module, dm, cfg = gpt
    for options in ({"temperature": 0}, {"alpha": 1.5}, {"steps": 0}, {"student": "small"}):
        with pytest.raises(LabError, match="option"):
            distill(module, dm, cfg, tmp_path, **options)
    with pytest.raises(ConfigError, match="n_head"):
        distill(module, dm, cfg, tmp_path, student={"n_embd": 30, "n_head": 4}, steps=1)
