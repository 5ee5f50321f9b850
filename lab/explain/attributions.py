"""Attribution maps through Captum: how much each pixel, feature or token moved one output.

    from lab.explain.attributions import Subject, attribute
    subject = Subject.of(model, family.explain, task="classifier", baseline=-0.8)
    x = images[:4]                                   # a batch as the DataModule yields it
    target = subject.predicted(x)                    # the class (or next token) each sample is explained for
    maps, delta = attribute(subject, "integrated_gradients", x, target)   # maps: x's shape (tokens: [B, T])

Three methods, each a different question (Captum implements them; the lab only picks the
output, the baseline and the shape):

- **Integrated Gradients** (Sundararajan et al., 2017): the gradient averaged along the straight
  path from a baseline (a black image, zero features, a text of blank tokens) to the input,
  times the difference. Its attributions add up to ``f(input) - f(baseline)`` (completeness);
  Captum reports how far they miss as the convergence delta.
- **Saliency** (Simonyan et al., 2013): the absolute gradient at the input. Cheap, local, noisy.
- **Occlusion** (Zeiler & Fergus, 2014): how much the output drops when a patch (or a token) is
  replaced by the baseline. Needs no gradients, so it also explains an int8 model.

For tokens, Integrated Gradients runs on the output of the token embedding (Captum's
``LayerIntegratedGradients``; token ids have no gradient), and a token's attribution is the sum
over its embedding channels. "The output" is the target class's logit for classifiers, the
predicted next token's logit after the last position for a language model, and the chosen
output for a regressor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lab.families.record import Explainable

ATTRIBUTIONS = ("integrated_gradients", "saliency", "occlusion")
"""The attribution methods (the other ``EXPLAIN_METHODS`` look inside a transformer)."""
IG_STEPS = 64
"""Integration steps (Gauss-Legendre, Captum's default rule): completeness within 1% on the lab's
trained models at this count (the delta is reported, and checked by ``lab explain --check``)."""
OCCLUSION_WINDOW = 2
"""Side of the square patch (images) or run of features occluded at once (a single token for text)."""


@dataclass
class Subject:
    """A model to explain, with what its maps cover and the baseline "absent" input."""

    model: nn.Module
    """The model in eval mode (inputs as its DataModule yields them)."""
    explain: Explainable
    """Its family's ``explain`` record: methods, what maps cover, where the token embedding is."""
    task: str
    """``classifier``, ``regressor`` or ``lm`` (the family's task)."""
    baseline: float = 0.0
    """Images and features: the value of an absent input (the standardised value of black for images);
    tokens: the id of the blank token the baseline text is made of."""

    @classmethod
    def of(cls, model: nn.Module, explain: Explainable, task: str, baseline: float = 0.0) -> "Subject":
        return cls(model.eval(), explain, task, baseline)

    @property
    def tokens(self) -> bool:
        return self.explain.inputs == "tokens"

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs one sample's explanation picks from: ``[B, classes]``, ``[B, vocab]`` (next token) or ``[B, out]``."""
        out = self.model(x)
        return out[:, -1, :] if self.task == "lm" else out

    def predicted(self, x: torch.Tensor) -> torch.Tensor:
        """What each sample is explained for: the predicted class or next token; output 0 of a regressor."""
        with torch.no_grad():
            out = self.outputs(x)
        return torch.zeros(len(x), dtype=torch.long) if self.task == "regressor" else out.argmax(-1)

    def score(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target's output per sample (what the attributions of one sample add up to, from the baseline)."""
        return self.outputs(x).gather(1, target.reshape(-1, 1)).squeeze(1)

    def confidence(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target's probability (classifiers, language models) or output (regressors), per sample."""
        with torch.no_grad():
            out = self.outputs(x)
            if self.task != "regressor":
                out = out.softmax(-1)
            return out.gather(1, target.reshape(-1, 1)).squeeze(1)

    def baseline_like(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline input: every value absent; for tokens every token blank (padding, ids < 0, stays padding)."""
        if self.tokens:
            return torch.where(x < 0, x, torch.full_like(x, int(self.baseline)))
        return torch.full_like(x, self.baseline)

    def embedding(self) -> nn.Module:
        return self.model.get_submodule(self.explain.embedding)


def attribute(subject: Subject, method: str, x: torch.Tensor, target: torch.Tensor,
              steps: int = IG_STEPS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``method``'s maps for a batch ``x`` explained for ``target`` -> (maps, convergence delta or None).

    Maps have ``x``'s shape (images ``[B, C, H, W]``, features ``[B, F]``) or ``[B, T]`` for tokens;
    the delta (Integrated Gradients) is ``sum(maps) - (f(x) - f(baseline))`` per sample.
    """
    from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients, Occlusion, Saliency

    if method not in ATTRIBUTIONS:
        raise ValueError(f"{method} is not an attribution method ({', '.join(ATTRIBUTIONS)})")
    forward: Callable[[torch.Tensor], torch.Tensor] = subject.outputs
    base = subject.baseline_like(x)
    target = target.reshape(-1)
    if subject.tokens:
        if method == "integrated_gradients":
            lig = LayerIntegratedGradients(forward, subject.embedding())
            maps, delta = lig.attribute(x, baselines=base, target=target, n_steps=steps,
                                        return_convergence_delta=True)
            return maps.sum(-1).detach(), delta.detach()
        if method == "occlusion":  # each token in turn replaced by the blank token
            positions = torch.arange(x.shape[1]).expand_as(x)
            return FeatureAblation(forward).attribute(x, baselines=base, target=target,
                                                      feature_mask=positions).detach(), None
        raise ValueError(f"{method} is not defined for tokens (integrated_gradients or occlusion)")
    x = x.detach().float()
    if method == "integrated_gradients":
        maps, delta = IntegratedGradients(forward).attribute(x, baselines=base, target=target, n_steps=steps,
                                                             return_convergence_delta=True)
        return maps.detach(), delta.detach()
    if method == "saliency":
        return Saliency(forward).attribute(x.clone().requires_grad_(), target=target).detach(), None
    window = tuple(min(OCCLUSION_WINDOW, s) for s in x.shape[1:])
    if subject.explain.inputs == "image":
        window = (x.shape[1], *window[1:])  # every channel of a patch at once
    return Occlusion(forward).attribute(x, sliding_window_shapes=window, strides=tuple(1 for _ in window),
                                       baselines=subject.baseline, target=target).detach(), None


def pixel_map(maps: torch.Tensor) -> torch.Tensor:
    """One value per position: channels summed for images (``[B, H, W]``); others unchanged."""
    return maps.sum(1) if maps.dim() == 4 else maps


def output_name(subject: Subject, target: int, names: Any = None, decode: Any = None, quoted: bool = False) -> str:
    """An output in words: a class name, a token (``quoted``: as ``repr`` shows it), or a regressor's output index."""
    if subject.task == "lm" and decode is not None:
        token = decode([int(target)])
        return repr(token) if quoted else token
    if subject.task == "classifier" and names:
        return str(names[int(target)])
    return f"output {int(target)}" if subject.task == "regressor" else f"class {int(target)}"


__all__ = ["ATTRIBUTIONS", "IG_STEPS", "Subject", "attribute", "output_name", "pixel_map"]
