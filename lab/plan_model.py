"""The numbers the planner needs from a model, read from a copy built on the ``meta`` device.

    from lab.config import load_config
    from lab.plan_model import model_facts
    facts = model_facts(load_config("gpt2-124m"), micro_batch=16)
    facts.params, facts.largest_layer_params, facts.flops_per_unit      # 124439808, 38597376, ...

A meta tensor has a shape and a dtype but no storage, so even a 70B-parameter config is
"built" in milliseconds without memory. For the GPT the planner uses published formulas
(``lab.plan_formulas``); the other models (CNN, ViT, MLP) have none, so their FLOPs are
counted on the meta device (``FlopCounterMode``, forward + backward) and their saved
activations traced: every tensor autograd saves for the backward pass, once per storage --
for real on the CPU in fp32, bf16 and under autocast (these models are small), from the
meta device for models above ``REAL_TRACE_LIMIT`` parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lab.config import Config
from lab.models import build_model
from lab.plan_formulas import gpt_flops_per_token

REAL_TRACE_LIMIT = 20_000_000
"""Non-GPT models up to this many parameters are traced for real on the CPU (autocast needs real tensors)."""
CHAR_VOCAB_BOUND = 256
"""Vocabulary assumed for a char tokenizer with ``model.vocab_size: null`` (the real count is only
known once the corpus is read; 256 is an upper bound for byte-like text)."""


@dataclass
class ModelFacts:
    """Counts that decide memory and compute, independent of how the model is trained."""

    name: str
    """Model family: gpt, cnn, vit or mlp."""
    params: int
    """Parameters, each tied tensor once (GPT-2 small: 124,439,808)."""
    non_embedding_params: int
    """Parameters minus the position table (what ``6N`` counts, as nanoGPT does)."""
    largest_layer_params: int
    """Most parameters held directly by one module (DeepSpeed's ZeRO-3 gather buffer)."""
    unit: str
    """What throughput and the budget count: tokens or samples."""
    units_per_sample: int
    """Tokens per sample (the sequence length) or 1."""
    flops_per_unit: float
    """Training FLOPs (forward + backward) per token or per sample."""
    n_layer: int = 0
    """Transformer blocks (GPT only)."""
    n_embd: int = 0
    """Residual width (GPT only)."""
    n_head: int = 0
    """Attention heads (GPT only)."""
    vocab_size: int = 0
    """Vocabulary size (GPT only)."""
    dropout: float = 0.0
    """Dropout probability (GPT only: adds dropout masks to the activations)."""
    traced_activation_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    """Non-GPT models: bytes saved for backward per micro-batch, by precision kind ("32", "16", "mixed";
    "mixed" includes autocast's weight copies), traced on the CPU (or the meta device for big models)."""


def _largest_layer(model: nn.Module) -> int:
    # DeepSpeed's model_to_params: parameters a module holds itself (recurse=False), largest one.
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


def trace_training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[int, int]:
    """(bytes saved for backward, FLOPs) of one forward + backward of ``loss_fn(model(x), y)``.

    Saved tensors are counted once per storage (views share one), leaving out parameters
    (they are model states, not activations). Works on real and on meta tensors.
    """
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes()
        return t

    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn(model(x), y)
        loss.backward()
    return sum(saved.values()), int(counter.get_total_flops())


_CACHE: dict[str, ModelFacts] = {}


def model_facts(cfg: Config, micro_batch: int, notes: list[str] | None = None) -> ModelFacts:
    """Parameters, largest layer and FLOPs of ``cfg.model`` (built on the meta device), per ``micro_batch``."""
    notes = notes if notes is not None else []
    m = cfg.model
    vocab = None
    if m.name == "gpt" and m.vocab_size is None:
        vocab = cfg.data.vocab_size if cfg.data.tokenizer == "bpe" else CHAR_VOCAB_BOUND
        notes.append(f"model.vocab_size is null: planned with {vocab} tokens "
                     f"({'data.vocab_size' if cfg.data.tokenizer == 'bpe' else 'an upper bound for characters'})")
    # recommend() plans dozens of setups of one model: build it once per shape (and micro-batch, for tracing).
    key = repr((m, vocab, None if m.name == "gpt" else micro_batch))
    if key not in _CACHE:
        _CACHE[key] = _facts(cfg, micro_batch, vocab)
    return dataclasses.replace(_CACHE[key])


def _facts(cfg: Config, micro_batch: int, vocab: int | None) -> ModelFacts:
    m = cfg.model
    if m.name == "gpt":
        vocab = vocab or m.vocab_size
        shape = type(m)(**{**m.__dict__, "vocab_size": vocab})
        with torch.device("meta"):
            model = build_model(shape)
        non_emb = model.num_params(non_embedding=True)
        return ModelFacts("gpt", model.num_params(), non_emb, _largest_layer(model), "tokens", m.block_size,
                          float(gpt_flops_per_token(non_emb, m.n_layer, m.n_embd, m.block_size)),
                          m.n_layer, m.n_embd, m.n_head, vocab, m.dropout)
    with torch.device("meta"):
        model = build_model(m)
    x, y, loss_fn = _batch(m, micro_batch, "meta")
    saved32, flops = trace_training_step(model.train(), x, y, loss_fn)
    n = sum(p.numel() for p in model.parameters())
    if n <= REAL_TRACE_LIMIT:
        traced = _trace_precisions(m, micro_batch)
    else:
        # Too big to build for real: fp32 from the meta trace, 16-bit halved, autocast in between.
        traced = {"32": saved32, "16": saved32 // 2, "mixed": saved32 * 3 // 4}
    return ModelFacts(m.name, n, n, _largest_layer(model), "samples", 1, flops / micro_batch,
                      traced_activation_bytes=traced)


def _batch(m: Any, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor, Callable]:
    with torch.device(device):
        if m.name == "mlp":
            return torch.randn(n, m.in_features), torch.randn(n, m.out_features), F.mse_loss
        return torch.randn(n, 1, m.image_size, m.image_size), torch.randint(0, m.num_classes, (n,)), F.cross_entropy


def _trace_precisions(m: Any, micro_batch: int) -> dict[str, int]:
    """Saved bytes per micro-batch in fp32, in 16 bits, and under autocast, traced for real on the CPU.

    Meta tensors cannot be autocast, and which tensors autocast keeps in fp32 (norms, losses)
    depends on the op, so small models are traced at up to 8 samples and scaled to ``micro_batch``
    (activations grow linearly with the batch).
    """
    b = min(micro_batch, 8)
    model = build_model(m).train()
    x, y, loss_fn = _batch(m, b, "cpu")

    def autocast_loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return loss_fn(out, t)

    out = {"32": trace_training_step(model, x, y, loss_fn)[0],
           "mixed": trace_training_step(_Autocast(model), x, y, autocast_loss)[0]}
    half = model.to(torch.bfloat16)
    out["16"] = trace_training_step(half, x.to(torch.bfloat16), y.to(torch.bfloat16) if y.is_floating_point() else y,
                                    loss_fn)[0]
    return {k: v * micro_batch // b for k, v in out.items()}


class _Autocast(nn.Module):
    """Runs a model under CPU bf16 autocast, as Lightning's ``bf16-mixed`` does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return self.model(x)
