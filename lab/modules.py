"""LightningModules: loss, metrics and optimizer around the pure-PyTorch models.

    from lab.modules import LanguageModel
    module = LanguageModel(GPT(GPTConfig(vocab_size=65)), OptimizerConfig(lr=1e-3), max_steps=600)
    trainer.fit(module, datamodule=dm)

All three share one step for train/val/test and log under namespaced keys
(``train/loss``, ``val/loss``, ``test/accuracy``...) so TensorBoard groups them.
Epoch-level metrics go through torchmetrics, which reduces them correctly across ranks.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lab.optim import OptimizerConfig, build_optimizer, lr_lambda
from lab.errors import LabError

STAGES = ("train", "val", "test")
CHECKPOINT_RECORD = "lab"
"""The checkpoint key under which ``LabModule.record`` is saved."""

PROMPT = "\n\nThe "
"""Where ``LanguageModel.sample`` starts by default: a paragraph's first word. From a bare newline
(token 0 of the bundled corpus) the likeliest continuation is indentation, and at a low temperature
(or greedy, ``top_k=1``) a small model that has printed a few spaces finds another one likeliest
again: the 1,500-step quickstart model printed 22-100% whitespace at temperature 0.5 (half of 8
seeds over 80%) and only spaces greedily. From this prompt it printed 16-36% over 10 seeds, near
the ~20% of English prose. A model of a few hundred steps can still wander into a padded table
at a low temperature."""


def per_stage(make: Callable[[], nn.Module]) -> nn.ModuleDict:
    """One metric object per stage (``train_``, ``val_``, ``test_``: ``train`` is taken by nn.Module)."""
    return nn.ModuleDict({f"{s}_": make() for s in STAGES})


class LabModule(L.LightningModule):
    """Shared plumbing: one step for every stage, optimizer and schedule, throughput units."""

    unit = "samples"
    """What throughput counts: ``samples`` or ``tokens``."""

    def __init__(self, model: nn.Module, optimizer: OptimizerConfig | None = None, max_steps: int = 1000) -> None:
        super().__init__()
        self.model = model
        self.optimizer_config = optimizer or OptimizerConfig()
        self.max_steps = max_steps
        self._flops_per_unit: float | None = None
        self.record: dict[str, Any] = {}
        """What a checkpoint carries besides weights (the run's resolved config, its tokenizer's JSON),
        so ``lab evaluate/sample/compress/export`` work on the .ckpt file alone. Plain data only:
        ``torch.load(weights_only=True)`` reads it back."""
        self.trainable_only = False
        """Save and load only the trainable tensors (LoRA adapters, a new head) and buffers: set by
        ``lab.families.build_module`` when the frozen base is rebuilt from ``model.init_from``, which the
        config inside the checkpoint names. A LoRA checkpoint of a pretrained GPT-2 is then megabytes."""

    def _frozen_keys(self, prefix: str = "") -> set[str]:
        # Both spellings of each name: a wrapper (activation checkpointing) renames modules, and its
        # hooks give the state dict the names a checkpoint holds, while loading reports its own.
        state = super().state_dict(prefix=prefix, keep_vars=True)
        return {k for k, v in state.items() if isinstance(v, nn.Parameter) and not v.requires_grad} | \
            {prefix + n for n, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """``nn.Module.state_dict``, less the frozen parameters when ``trainable_only`` (what checkpoints hold)."""
        frozen = self._frozen_keys(prefix) if self.trainable_only else set()
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in frozen & set(state):
            del state[key]
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; with ``trainable_only``, the frozen parameters may be absent
        (they came from ``model.init_from``), but every trainable tensor must be there under ``strict``."""
        if not self.trainable_only:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = self._frozen_keys()
        missing = [k for k in result.missing_keys if k not in frozen]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, "
                               f"unexpected keys {result.unexpected_keys}")
        return result._replace(missing_keys=missing)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.record:
            checkpoint[CHECKPOINT_RECORD] = self.record

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def compute(self, batch: Any, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (loss, per-batch metrics to log); subclasses update epoch metrics here."""
        raise NotImplementedError

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        loss, metrics = self.compute(batch, stage)
        on_step = stage == "train"
        if on_step and not self.logs_this_step():
            return loss
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True,
                 sync_dist=not on_step, batch_size=len(batch[0]))
        for key, value in metrics.items():
            self.log(f"{stage}/{key}", value, on_step=on_step, on_epoch=not on_step, batch_size=len(batch[0]))
        return loss

    def logs_this_step(self) -> bool:
        """Whether the Trainer writes step metrics after this batch (every ``log_every_n_steps``).

        Lightning keeps a ``self.log`` value until the next write, so calling it on the other
        steps only costs time: at gpt-nano's 35 ms steps its bookkeeping was a few percent
        of the step (benchmarks/train_throughput.py). The last step and a stopping step log too.
        """
        trainer = self.trainer
        step = trainer.global_step + 1
        return step % trainer.log_every_n_steps == 0 or step >= trainer.max_steps > 0 or trainer.should_stop

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        precision = self.trainer.precision if self._trainer is not None else "32-true"
        opt = build_optimizer(self.model, self.optimizer_config, self.device, precision)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.optimizer_config, self.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def units_in(self, batch: Any) -> int:
        """Samples (or tokens) in a batch, for throughput."""
        return len(batch[0])

    def flops_per_unit(self, batch: Any) -> float:
        """Training FLOPs (forward + backward) per sample, counted once with torch's FlopCounterMode."""
        if self._flops_per_unit is None:
            x, y = batch[0][:1], batch[1][:1]
            with FlopCounterMode(display=False) as counter:
                loss, _ = self._loss_only(x, y)
                loss.backward()
            self.model.zero_grad(set_to_none=True)
            self._flops_per_unit = float(counter.get_total_flops())
        return self._flops_per_unit

    def _loss_only(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return self.loss(logits, y), logits

    @staticmethod
    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of (model output, targets); a plain function, so planners can trace it."""
        raise NotImplementedError


class LanguageModel(LabModule):
    """Next-token cross-entropy; logs perplexity, bits per token and a generated sample."""

    unit = "tokens"

    def __init__(self, model: nn.Module, optimizer: OptimizerConfig | None = None, max_steps: int = 1000,
                 decode: Callable[[list[int]], str] | None = None, sample_tokens: int = 200,
                 encode: Callable[[str], list[int]] | None = None) -> None:
        super().__init__(model, optimizer, max_steps)
        self.decode, self.encode = decode, encode
        self.sample_tokens = sample_tokens
        # Token-weighted mean loss per stage; perplexity is exp of the mean loss, not a mean of exps.
        self.mean_loss = per_stage(torchmetrics.MeanMetric)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def compute(self, batch: Any, stage: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y = batch
        loss, _ = self._loss_only(x, y)
        if stage != "train":
            self.mean_loss[f"{stage}_"].update(loss.detach(), weight=y.numel())
        return loss, {}

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        loss, _ = self.compute(batch, stage)
        if stage == "train" and self.logs_this_step():
            self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def _log_epoch(self, stage: str) -> None:
        mean = self.mean_loss[f"{stage}_"].compute()
        self.mean_loss[f"{stage}_"].reset()
        # compute() has already reduced over the ranks, so every rank holds the same values;
        # sync_dist averages those identical values (3 scalars per epoch) and tells Lightning,
        # which otherwise warns that epoch-level logs under DDP are not synced.
        self.log_dict({f"{stage}/loss": mean, f"{stage}/perplexity": torch.exp(mean),
                       f"{stage}/bits_per_token": mean / math.log(2)}, prog_bar=stage == "val", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")
        if not self.trainer.sanity_checking and self.trainer.is_global_zero and self.decode and self.logger:
            self.logger.experiment.add_text("samples", self.sample(self.sample_tokens), self.global_step)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def units_in(self, batch: Any) -> int:
        return batch[0].numel()

    def flops_per_unit(self, batch: Any) -> float:
        if self._flops_per_unit is None:  # counting parameters every step cost ~1% of a gpt-nano step
            self._flops_per_unit = float(self.model.flops_per_token())
        return self._flops_per_unit

    def sample(self, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 50, seed: int = 0,
               prompt: str | None = None) -> str:
        """``prompt`` followed by ``max_new_tokens`` generated tokens, decoded.

        ``prompt=None`` starts a paragraph (``PROMPT``) when the tokenizer can encode it, else from
        token 0. A prompt given explicitly that the tokenizer cannot encode raises its DataError.
        """
        gen = torch.Generator(device=self.device).manual_seed(seed)
        start = torch.tensor([self._prompt_ids(prompt)], dtype=torch.long, device=self.device)
        out = self.model.generate(start, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
        return self.decode(out[0].tolist()) if self.decode else str(out[0].tolist())

    def _prompt_ids(self, prompt: str | None) -> list[int]:
        if prompt is not None:
            if self.encode is None:
                raise ValueError("this module has no tokenizer to encode a prompt (build it with encode=...)")
            ids = self.encode(prompt)
            if not ids:
                raise ValueError("the prompt is empty: give some text, or prompt=None for the default")
            return ids
        if self.encode is not None:
            try:
                return self.encode(PROMPT)
            except LabError:  # a character tokenizer of a corpus without these characters
                pass
        return [0]


class Classifier(LabModule):
    """Cross-entropy; accuracy and macro-F1 through torchmetrics."""

    def __init__(self, model: nn.Module, optimizer: OptimizerConfig | None = None, max_steps: int = 1000,
                 num_classes: int = 10) -> None:
        super().__init__(model, optimizer, max_steps)
        self.metrics = per_stage(lambda: torchmetrics.MetricCollection({
            "accuracy": torchmetrics.classification.MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": torchmetrics.classification.MulticlassF1Score(num_classes, average="macro"),
        }))

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def compute(self, batch: Any, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        loss, logits = self._loss_only(x, y)
        self.metrics[f"{stage}_"](logits.detach(), y)  # forward: batch value + epoch state
        return loss, dict(self.metrics[f"{stage}_"].items())


class Regressor(LabModule):
    """Mean squared error; MAE and R² through torchmetrics."""

    def __init__(self, model: nn.Module, optimizer: OptimizerConfig | None = None, max_steps: int = 1000) -> None:
        super().__init__(model, optimizer, max_steps)
        self.metrics = per_stage(lambda: torchmetrics.MetricCollection({
            "mse": torchmetrics.MeanSquaredError(),
            "mae": torchmetrics.MeanAbsoluteError(),
            "r2": torchmetrics.R2Score(),
        }))

    @staticmethod
    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output, target)

    def compute(self, batch: Any, stage: str) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        loss, out = self._loss_only(x, y)
        self.metrics[f"{stage}_"](out.detach().flatten(), y.flatten())
        return loss, dict(self.metrics[f"{stage}_"].items())
