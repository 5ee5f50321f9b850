"""The learning-rate range test (Smith, 2015; fast.ai's ``lr_find``), with its rule in the open.

    from lab.config import load_config
    from lab.lr_finder import find_lr
    result = find_lr(load_config("gpt-nano"))   # 10-30 s on 2 cores, no run folder
    result.suggestion                           # a learning rate, e.g. 2.9e-03
    print(result.rule)                          # how it was picked, in one sentence
    result.plot()                               # raw and smoothed loss against lr, the pick marked

One model trains ``num_steps`` steps while the learning rate grows exponentially from
``min_lr`` to ``max_lr``; the loss of each step is recorded. Three things make the curve
honest enough to read:

- **smoothing**: a per-batch loss is noisy, so the curve is an exponential moving average
  with bias correction (without it the first points read far below the real loss: an
  average that starts at 0 and has seen one loss of 4.6 is 0.02 x 4.6);
- **a short memory**: an average with a long memory lags the lr sweep (at 100 steps over
  5 decades, 50 steps of memory put each point 2.5 decades to the right of its lr), so
  ``beta`` is 0.9 (about 10 steps) and the sweep takes 200 steps;
- **a stop**: once the smoothed loss exceeds ``diverge`` x its minimum the model is
  being destroyed, and nothing after that point is informative.

The suggestion is the rate at the **bottom of the smoothed curve, read back by the
average's lag**: the bottom is the fastest rate at which the model still learnt during the
sweep; an average with memory ``beta`` trails the sweep by ``beta / (1 - beta)`` steps (9
at 0.9), so its lowest value belongs to the rate of 9 steps earlier. On gpt-nano this lands
at about 3e-3, beside the preset's 2e-3, and trains as well in 300-step runs (measured: 5e-4
2.42, 1e-3 2.36, 2e-3 2.32, 4e-3 2.35, 8e-3 2.30 best val loss). The textbook rules pick far
too low here: the steepest descent sits in the first steps, where any rate teaches letter
frequencies (5e-4), and "minimum / 10" assumes the loss blows up right after its minimum,
while gradient clipping keeps gpt-nano's valley flat up to ~1e-2 (5e-4 again). Lightning's
``Tuner.lr_find`` applies its bias correction one step late, so its first points read half the
real loss (2.3 instead of 4.6): its curve rises before it falls and its steepest point lands
on that artefact.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from lab.config import Config, validate
from lab.families import build_datamodule, build_module
from lab.optim import build_optimizer

RULE = ("lowest smoothed loss {low:.2f} at step {step} (lr {lr_low:.1e}); the average (beta={beta}) lags "
        "{lag} steps, so the rate that got there is step {pick}'s: {suggestion:.1e}")


@dataclass
class LRFinderResult:
    """One range test: the rates, raw and smoothed losses, and the suggestion with its rule."""

    lrs: list[float]
    """The learning rate of each step taken (the sweep stops early when the loss diverges)."""
    losses: list[float]
    """The training loss of each step, as measured (noisy)."""
    smoothed: list[float]
    """Bias-corrected exponential moving average of ``losses``."""
    beta: float
    """The average's memory: each step keeps ``beta`` of the previous value."""
    stopped_early: bool = False
    """True when the smoothed loss diverged before ``max_lr``."""
    suggestion: float | None = None
    """The suggested learning rate (None when the sweep was too short to tell)."""
    lr_low: float | None = None
    """The rate at the lowest point of the smoothed curve (the suggestion is read back from there)."""
    rule: str = ""
    """How ``suggestion`` was picked, with the numbers."""

    def plot(self, ax: Any = None) -> Any:
        """Raw loss (faint), smoothed loss, the minimum and the suggestion marked; returns the Axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        ax.plot(self.lrs, self.losses, color="tab:blue", alpha=0.25, lw=1, label="loss of each step")
        ax.plot(self.lrs, self.smoothed, color="tab:blue", lw=2, label=f"smoothed (EMA, beta={self.beta})")
        if self.lr_low is not None and self.suggestion is not None:
            low = self.lrs.index(self.lr_low)
            ax.scatter([self.lr_low], [self.smoothed[low]], color="tab:red", zorder=3,
                       label=f"lowest smoothed loss, lr {self.lr_low:.1e}")
            ax.axvline(self.suggestion, color="tab:green", ls="--",
                       label=f"suggestion {self.suggestion:.1e} ({lag(self.beta)} steps earlier: the average's lag)")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        # The diverged tail can be huge: keep the informative part in view.
        finite = [v for v in self.smoothed if math.isfinite(v)]
        if finite:
            ax.set_ylim(min(finite) - 0.1, max(self.smoothed[0], min(finite)) + 0.5)
        ax.legend(fontsize=8)
        ax.set_title("learning-rate range test")
        return ax


def smooth(values: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction: step ``i`` divides by ``1 - beta**(i+1)``."""
    avg, out = 0.0, []
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def lag(beta: float) -> int:
    """Steps an exponential moving average with memory ``beta`` trails its input by (its mean delay)."""
    return round(beta / (1 - beta))


def suggest(lrs: list[float], smoothed: list[float], beta: float, skip: int = 10) -> tuple[int, int] | None:
    """(step of the lowest smoothed loss, step whose rate is suggested): the lowest point past the
    first ``skip`` (where the average has seen too few losses), read back by ``lag(beta)`` steps;
    None when the sweep is too short to have a bottom."""
    if len(smoothed) <= skip:
        return None
    low = min(range(skip, len(smoothed)), key=smoothed.__getitem__)
    return low, max(low - lag(beta), 0)


def find_lr(cfg: Config, num_steps: int = 200, min_lr: float = 1e-5, max_lr: float = 1.0,
            beta: float = 0.9, diverge: float = 4.0) -> LRFinderResult:
    """Run the range test on ``cfg``'s model and data (optimizer, clipping and seed as ``cfg``), on CPU,
    writing nothing. The config's schedule (warm-up, cosine) is replaced by the sweep, whose first
    steps at ``min_lr`` are a warm-up in themselves."""
    validate(cfg)
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 to sweep a range, got {num_steps}")
    # The text DataModule draws one window per sample of the run: size it for the sweep.
    sweep = dataclasses.replace(cfg.trainer, max_steps=num_steps, accumulate_grad_batches=1)
    cfg = dataclasses.replace(cfg, trainer=sweep)
    torch.manual_seed(cfg.seed)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm).train()
    optimizer = build_optimizer(module.model, cfg.optimizer, torch.device("cpu"))
    clip = cfg.trainer.gradient_clip_val
    factor = (max_lr / min_lr) ** (1 / (num_steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped = False
    batches = iter(dm.train_dataloader())
    for step in range(num_steps):
        try:
            batch = next(batches)
        except StopIteration:  # a small dataset: start another epoch
            batches = iter(dm.train_dataloader())
            batch = next(batches)
        lr = min_lr * factor ** step
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, _ = module.compute(batch, "train")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), clip)
        if not math.isfinite(loss.item()):  # diverged outright: this step tells nothing more
            stopped = True
            break
        optimizer.step()
        lrs.append(lr)
        losses.append(loss.item())
        smoothed = smooth(losses, beta)  # recomputed each step: 200 steps cost microseconds
        if step > 10 and smoothed[-1] > diverge * min(smoothed):
            stopped = True
            break
    picked = suggest(lrs, smoothed, beta)
    if picked is None:
        return LRFinderResult(lrs, losses, smoothed, beta, stopped, rule=(
            f"no suggestion: the loss diverged after {len(lrs)} steps; lower min_lr or take more steps"))
    low, pick = picked
    rule = RULE.format(low=smoothed[low], step=low, lr_low=lrs[low], beta=beta, lag=lag(beta), pick=pick,
                       suggestion=lrs[pick])
    return LRFinderResult(lrs, losses, smoothed, beta, stopped, lrs[pick], lrs[low], rule)
