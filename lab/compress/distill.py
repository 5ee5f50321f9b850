"""Knowledge distillation: train a smaller student on the run's model (the teacher) as well as the labels.

    from lab.compress import compress
    compress(run, "distill")                 # derived student, as many steps as the teacher trained
    # or directly, as the framework calls it:
    art = distill(module, dm, cfg, out_dir, student={"n_layer": 1, "n_embd": 64}, steps=500,
                  temperature=2.0, alpha=0.5)
    art.notes["val_loss"]          # {"teacher": ..., "student": ..., "baseline_student": ...}

The student's loss is ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) +
(1 - alpha) * hard-label loss`` (Hinton et al., 2015): per token over the vocabulary for a
language model, per image for a classifier; a regressor has no distribution to soften, so
its soft term is the MSE to the teacher's outputs. ``T^2`` keeps the soft gradients on the
scale of the hard ones whatever the temperature.

To show what the teacher bought, the same student (same config, same initial weights, same
batches, same steps) is also trained on the labels alone: ``baseline_student`` in the notes.

By default the student gets the teacher's own training budget (the run's ``trainer.max_steps``):
a student trained for fewer steps than its teacher is judged against a better-trained model.
Measured on gpt-nano (teacher 1,500 steps, val loss 1.496): the half-size student reaches 1.465
distilled and 1.512 on the labels alone; with 300 steps it reached only 92% of a 600-step
teacher's quality (benchmarks/README.md).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lab.compress import Artifact
from lab.compress.prune import check_steps, save_weights
from lab.config import Config, from_dict, plain, validate
from lab.errors import LabError
from lab.cost import num_params
from lab.evaluate import kind_of, quality
from lab.families import build_module, family
from lab.modules import LabModule, Regressor
from lab.train import train_module

STUDENT_MAX_RATIO = 0.5
"""A derived student has at most this share of the teacher's parameters."""


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                      hard_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      temperature: float = 2.0, alpha: float = 0.5,
                      soft: str = "kl") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(alpha * soft + (1 - alpha) * hard, soft, hard)`` for one batch.

    ``soft="kl"``: ``T^2 * KL(p_teacher || p_student)`` at temperature T, averaged over every
    position but the last axis (tokens of a sequence, images of a batch). ``soft="mse"``:
    MSE between student and teacher outputs (regression). ``hard_loss(student, target)`` is
    the student module's own loss, so the hard term is exactly what training alone would use.
    """
    if soft == "kl":
        t = temperature
        log_p_student = F.log_softmax(student.flatten(0, -2) / t, dim=-1)
        log_p_teacher = F.log_softmax(teacher.flatten(0, -2) / t, dim=-1)
        soft_loss = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t
    else:
        soft_loss = F.mse_loss(student, teacher)
    hard = hard_loss(student, target)
    return alpha * soft_loss + (1 - alpha) * hard, soft_loss, hard


class DistillationModule(LabModule):
    """Trains ``student.model`` against a frozen teacher; loss and optimizer come from ``student``.

        student = build_module(student_cfg, dm)
        train_module(DistillationModule(student, teacher_model, temperature=2.0, alpha=0.5), dm, 300)
        student.model                                  # trained in place
    """

    def __init__(self, student: LabModule, teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5) -> None:
        super().__init__(student.model, student.optimizer_config, student.max_steps)
        self.unit = student.unit
        # A submodule so it moves with the student between devices; the optimizer only sees
        # self.model (LabModule.configure_optimizers), and the flags guard against mistakes.
        self.teacher = teacher.requires_grad_(False).eval()
        self.hard_loss = student.loss
        self.soft = "mse" if isinstance(student, Regressor) else "kl"
        self.temperature, self.alpha = temperature, alpha

    def train(self, mode: bool = True) -> DistillationModule:
        """Switch the student's mode; the teacher stays in eval mode (no dropout, frozen BatchNorm)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.hard_loss(output, target)

    def compute(self, batch: Any, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        out = self.model(x)
        with torch.no_grad():
            teacher_out = self.teacher(x)
        loss, soft, hard = distillation_loss(out, teacher_out, y, self.hard_loss, self.temperature, self.alpha,
                                             self.soft)
        return loss, {"soft_loss": soft.detach(), "hard_loss": hard.detach()}


def val_quality(model: nn.Module, dm: L.LightningDataModule, kind: str) -> dict[str, float]:
    """Scalar quality figures of ``model`` on the val split, by the framework's own ``lab.evaluate.quality``.

    The test split is the framework's; teacher, student and baseline all see the same
    sequential val batches, so their figures compare like for like.
    """
    q = quality(model.eval(), dm, "val", kind)
    return {k: v for k, v in q.items() if isinstance(v, (int, float))}  # no confusion matrix or per-class lists


def _count(model_cfg: Any) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return num_params(family(model_cfg.name).build(model_cfg))


def _narrow(c: Any, scale: float) -> dict[str, Any]:
    fam = family(c.name)
    if fam.narrow is None:
        raise LabError(f"distill cannot derive a student for model {c.name!r}: pass option student={{...}}")
    return fam.narrow(c, scale)


def derive_student(model_cfg: Any, max_ratio: float = STUDENT_MAX_RATIO) -> dict[str, Any]:
    """Model overrides for a student with at most ``max_ratio`` of the teacher's parameters.

    Transformers lose half their blocks; then every model is narrowed (widths times 1.0,
    0.95, ...) until it fits, so the student is as wide as the budget allows.
    """
    budget = max_ratio * _count(model_cfg)
    for step in range(20, 0, -1):
        overrides = _narrow(model_cfg, step / 20)
        if _count(dataclasses.replace(model_cfg, **overrides)) <= budget:
            return overrides
    raise LabError(f"no student of model {model_cfg.name!r} fits {max_ratio:.0%} of the teacher's parameters; "
                   "pass option student={...}")


def student_config(cfg: Config, teacher_model_cfg: Any, student: dict[str, Any] | None) -> tuple[Config, dict]:
    """The run's config with the student's model section (validated like any config) and the overrides used."""
    if student is not None and not isinstance(student, dict):
        raise LabError(f"option student={student!r}: expected a mapping of model fields, e.g. {{'n_layer': 2}}")
    overrides = dict(student) if student is not None else derive_student(teacher_model_cfg)
    if "name" in overrides and overrides["name"] != teacher_model_cfg.name:
        raise LabError("option student: the student must be the same kind of model as the teacher")
    raw = cfg.to_dict()
    # The teacher's own config: it has the vocabulary size filled in, which the run's may leave null.
    raw["model"] = {**plain(dataclasses.asdict(teacher_model_cfg)), **overrides}
    # A student of another shape starts from random weights and trains all of them: a LoRA
    # teacher's adapters-only setting would leave it training adapters on a random base.
    raw.pop("finetune", None)
    out = from_dict(raw)
    validate(out)
    return out, overrides


def distill(module: LabModule, dm: L.LightningDataModule, cfg: Config, out_dir: Path,
            student: dict[str, Any] | None = None, steps: int | None = None, temperature: float = 2.0,
            alpha: float = 0.5, seed: int | None = None, **_: Any) -> Artifact:
    """Distil ``module`` into a student (``student`` overrides, or derived) for ``steps``, plus a baseline.

    ``steps``: training steps of each student; None = the teacher's ``cfg.trainer.max_steps``.
    """
    steps = check_steps(cfg.trainer.max_steps if steps is None else steps, minimum=1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise LabError(f"option temperature={temperature!r}: expected a number > 0 (1 = plain softmax)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise LabError(f"option alpha={alpha!r}: expected a number in [0, 1] (0 = labels only)")
    teacher = copy.deepcopy(module.model).eval()  # the framework still evaluates the original
    s_cfg, overrides = student_config(cfg, teacher.config, student)

    # Same initial weights for both students, so the only difference is the teacher.
    L.seed_everything(cfg.seed if seed is None else seed, verbose=False)
    students = [build_module(s_cfg, dm), build_module(s_cfg, dm)]
    students[1].model.load_state_dict(students[0].model.state_dict())
    for s in students:
        s.max_steps = steps  # the cosine schedule spans this training, not the run's
    distilled, baseline = students
    # train_module reseeds, so both see the same batches in the same order.
    with warnings.catch_warnings():  # Lightning warns about modules in eval mode: the teacher is, on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")
        train_module(DistillationModule(distilled, teacher, temperature, alpha).train(), dm, steps)
    train_module(baseline.train(), dm, steps)

    model = distilled.model.eval()
    kind = kind_of(cfg)
    val = {"teacher": val_quality(teacher, dm, kind), "student": val_quality(model, dm, kind),
           "baseline_student": val_quality(baseline.model, dm, kind)}
    # The training loss of each kind: cross-entropy, or the MSE for a regressor.
    losses = {k: q["loss"] if "loss" in q else q["mse"] for k, q in val.items()}
    teacher_params, student_params = num_params(teacher), num_params(model)
    return Artifact(
        predict=model, files=save_weights(model, out_dir, s_cfg.to_dict()), params=student_params,
        backend="torch eager fp32", example_module=model,
        notes={"student": overrides, "student_config": s_cfg.to_dict()["model"], "derived": student is None,
               "teacher_params": teacher_params, "student_params": student_params,
               "params_ratio": student_params / teacher_params, "steps": steps, "temperature": temperature,
               "alpha": alpha, "soft_target": "MSE to the teacher's outputs" if isinstance(module, Regressor)
               else "KL(teacher || student) at temperature T, times T^2",
               "val_loss": losses, "val_quality": val,
               "baseline_student": {"val_loss": losses["baseline_student"], **val["baseline_student"], "steps": steps,
                                    "trained": "same config, init, batches and steps; hard labels only"},
               "distillation_gain": losses["baseline_student"] - losses["student"]})
