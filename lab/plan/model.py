"""The numbers the planner needs from a model, read from a copy built on the ``meta`` device.

    from lab.config import load_config
    from lab.plan.model import model_facts
    facts = model_facts(load_config("gpt2-124m"), micro_batch=16)
    facts.params, facts.largest_layer_params, facts.flops_per_unit      # 124439808, 38597376, ...

A meta tensor has a shape and a dtype but no storage, so even a 70B-parameter config is
"built" in milliseconds without memory. For a family that gives its transformer shape (its
record's ``transformer`` hook: the GPT) the planner uses published formulas
(``lab.plan.formulas``); for the others (CNN, ViT, MLP) their FLOPs are
counted on the meta device (``FlopCounterMode``, forward + backward) and their saved
activations traced: every tensor autograd saves for the backward pass, once per storage --
for real on the CPU in fp32, bf16 and under autocast (these models are small), from the
meta device for models above ``REAL_TRACE_LIMIT`` parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lab.config import Config
from lab.families import ModelFamily, TransformerShape, family_of
from lab.finetune import FinetuneConfig, apply, trainable_summary
from lab.plan.formulas import gpt_flops_per_token

REAL_TRACE_LIMIT = 20_000_000
"""Traced models up to this many parameters are traced for real on the CPU (autocast needs real tensors)."""
@dataclass
class ModelFacts:
    """Counts that decide memory and compute, independent of how the model is trained."""

    name: str
    """Model family (``model.name``)."""
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
    shape: TransformerShape | None = None
    """The transformer shape the family gives the planner (analytic activation memory), or None."""
    fsdp_unit_params: int = 0
    """Parameters FSDP (FULL_SHARD) holds gathered at once under the lab's wrap policy, one unit per
    family block: the root unit (everything outside the blocks, kept gathered through forward and
    backward) plus two blocks (the one running and the one prefetched); the whole model when the
    family has no blocks. 0 = unknown: planned as the whole model."""
    traced_activation_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    """Families without a transformer shape: bytes saved for backward per micro-batch, by precision
    kind ("32", "16", "mixed"; "mixed" includes autocast's weight copies), traced on the CPU (or the
    meta device for big models)."""
    trainable_params: int | None = None
    """Parameters that train (get gradients and optimizer states); None = all of them."""
    finetune: FinetuneConfig | None = None
    """The LoRA settings when only adapters train (``finetune.method: lora``), else None."""

    @property
    def trainable(self) -> int:
        """Parameters with gradients and optimizer states."""
        return self.params if self.trainable_params is None else self.trainable_params


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
    fam = family_of(cfg)
    m, note = fam.plan_shape(cfg) if fam.plan_shape else (cfg.model, None)
    if note:
        notes.append(note)
    # recommend() plans dozens of setups of one model: build it once per shape (and micro-batch, for tracing).
    fc = cfg.finetune
    key = repr((m, fc if fc.lora else None, None if fam.transformer else micro_batch))
    if key not in _CACHE:
        _CACHE[key] = _facts(fam, m, micro_batch, fc)
    return dataclasses.replace(_CACHE[key])


def _fsdp_unit(model: nn.Module, blocks: tuple[type[nn.Module], ...]) -> int:
    total = sum(p.numel() for p in model.parameters())
    sizes = [sum(p.numel() for p in m.parameters()) for m in model.modules() if blocks and isinstance(m, blocks)]
    if not sizes:
        return total  # nothing wrapped: one unit, the whole model
    return total - sum(sizes) + 2 * max(sizes)


def _facts(fam: ModelFamily, m: Any, micro_batch: int, fc: FinetuneConfig) -> ModelFacts:
    model = _build(fam, m, fc, "meta")
    facts = _counted(fam, m, model, micro_batch, fc)
    facts.fsdp_unit_params = _fsdp_unit(model, fam.blocks)
    if fc.lora:  # only the adapters (and a new head) get gradients and optimizer states
        facts.trainable_params, facts.finetune = trainable_summary(model)[0], fc
    return facts


def _build(fam: ModelFamily, m: Any, fc: FinetuneConfig, device: str | None = None) -> nn.Module:
    """The model as ``fit`` trains it: built, then frozen and adapted as ``finetune`` says."""
    with torch.device(device) if device else contextlib.nullcontext():
        return apply(fam.build(m), fc, fam)


def _counted(fam: ModelFamily, m: Any, model: nn.Module, micro_batch: int, fc: FinetuneConfig) -> ModelFacts:
    n = sum(p.numel() for p in model.parameters())
    if fam.transformer is not None:
        shape = fam.transformer(m)
        # 6N counts the weights every token multiplies (nanoGPT's non-embedding count).
        non_emb = model.num_params(non_embedding=True) if hasattr(model, "num_params") else n
        flops = gpt_flops_per_token(non_emb, shape.n_layer, shape.n_embd, shape.seq_len)
        return ModelFacts(fam.name, n, non_emb, _largest_layer(model), fam.unit, shape.seq_len, float(flops),
                          shape=shape)
    x, y = _on(fam.example(m, micro_batch, None), "meta")
    saved32, flops = trace_training_step(model.train(), x, y, fam.loss)
    if n <= REAL_TRACE_LIMIT:
        traced = _trace_precisions(fam, m, micro_batch, fc)
    else:
        # Too big to build for real: fp32 from the meta trace, 16-bit halved, autocast in between.
        traced = {"32": saved32, "16": saved32 // 2, "mixed": saved32 * 3 // 4}
    return ModelFacts(fam.name, n, n, _largest_layer(model), "samples", 1, flops / micro_batch,
                      traced_activation_bytes=traced)


def _on(batch: tuple[torch.Tensor, torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0].to(device), batch[1].to(device)


def _trace_precisions(fam: ModelFamily, m: Any, micro_batch: int, fc: FinetuneConfig) -> dict[str, int]:
    """Saved bytes per micro-batch in fp32, in 16 bits, and under autocast, traced for real on the CPU.

    Meta tensors cannot be autocast, and which tensors autocast keeps in fp32 (norms, losses)
    depends on the op, so small models are traced at up to 8 samples and scaled to ``micro_batch``
    (activations grow linearly with the batch).
    """
    b = min(micro_batch, 8)
    model = _build(fam, m, fc).train()
    x, y = fam.example(m, b, torch.Generator().manual_seed(0))
    loss_fn = fam.loss

    def autocast_loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return loss_fn(out, t)

    out = {"32": trace_training_step(model, x, y, loss_fn)[0],
           "mixed": trace_training_step(_Autocast(model), x, y, autocast_loss)[0]}
    half = model.to(torch.bfloat16)
    # Ids (tokens, users) stay integers: only floating inputs become 16-bit.
    out["16"] = trace_training_step(half, x.to(torch.bfloat16) if x.is_floating_point() else x,
                                    y.to(torch.bfloat16) if y.is_floating_point() else y,
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
