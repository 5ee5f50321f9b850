"""Bytes per device by kind, for a model, a precision, an optimizer and a strategy.

    from lab.plan.memory import estimate_memory
    mem = estimate_memory(facts, PRECISIONS["bf16-mixed"], "adamw", 0.9, "deepspeed_stage_2", devices=8,
                          nodes=1, micro_batch=16, activation_checkpointing=False)
    mem.weights, mem.gradients, mem.optimizer, mem.activations, mem.other, mem.total, mem.host

How each strategy lays out the model states (sources in ``lab.plan.formulas``):

- single / ddp: weights, gradients and optimizer states whole on every device, at the
  precision's bytes: plain PyTorch under ``*-mixed`` keeps fp32 weights, fp32 gradients and
  fp32 Adam moments, 4 + 4 + 8 = 16 bytes per parameter, the ZeRO paper's figure (there as
  2 + 2 + 12). DDP adds its gradient buckets (as large as the gradients, because Lightning
  leaves ``gradient_as_bucket_view`` off); autocast adds a 16-bit copy of each weight.
  Under LoRA (``finetune.method: lora``) only the trainable parameters (``ModelFacts.trainable``)
  have gradients, buckets and optimizer states, and fewer activations are saved
  (``gpt_lora_activation_change``); ``lab fit`` trains LoRA with single or ddp only.
- fsdp / fsdp_grad_op: the ZeRO-3 / ZeRO-2 partitioning of the same fp32 states, plus the
  gathered 16-bit parameters and gradients of the FSDP units held at once. The lab's ``fsdp``
  wraps each block of the model's family (``auto_wrap_policy``), so FULL_SHARD holds the root
  unit and two blocks (``ModelFacts.fsdp_unit_params``); SHARD_GRAD_OP holds the whole model.
- deepspeed_stage_2/3 (and ``_offload``): DeepSpeed's estimators exactly (16-bit weights and
  gradients, fp32 master weights + moments + gradients partitioned); the model runs in 16 bits,
  so its activations are those of ``bf16-true``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.plan.formulas import (
    PRECISIONS,
    Precision,
    gpt_layer_activation_bytes,
    gpt_lora_activation_change,
    gpt_loss_backward_bytes,
    gpt_output_activation_bytes,
    optimizer_bytes_per_param,
)
from lab.plan.model import ModelFacts

OFFLOAD_BUFFER = 1.5
"""DeepSpeed's ``additional_buffer_factor`` for host memory."""


@dataclass
class MemoryBreakdown:
    """Estimated bytes on each device (``host``: per node, in CPU RAM)."""

    weights: int
    """Parameters (plus gathered shards for FSDP / ZeRO-3)."""
    gradients: int
    """Gradients (plus DeepSpeed's fp32 gradient partition)."""
    optimizer: int
    """Optimizer states (plus fp32 master weights where the strategy keeps them)."""
    activations: int
    """Tensors saved for the backward pass, one micro-batch."""
    other: int
    """Autocast's weight copies, DDP gradient buckets, the loss's backward buffers."""
    host: int = 0
    """CPU bytes per node for offloaded states (DeepSpeed's estimate); 0 without offload."""
    total: int = 0
    """Everything on the device: the sum of the five above."""

    def __post_init__(self) -> None:
        self.total = self.weights + self.gradients + self.optimizer + self.activations + self.other

    @property
    def model_states(self) -> int:
        """Weights + gradients + optimizer states (what the ZeRO paper calls model states)."""
        return self.weights + self.gradients + self.optimizer


def activation_bytes(facts: ModelFacts, prec: Precision, micro_batch: int, checkpointing: bool) -> tuple[int, int]:
    """(saved activations, transient loss-backward buffers) for one micro-batch on one device."""
    shape = facts.shape
    if shape is None:
        kind = "mixed" if prec.cast else ("16" if prec.half else "32")
        return facts.traced_activation_bytes.get(kind, 0) * (2 if prec.weight == 8 else 1), 0
    s, h = shape.seq_len, shape.n_embd
    layer = gpt_layer_activation_bytes(micro_batch, s, h, shape.n_head, prec, shape.dropout)
    once = 0
    lora = facts.finetune
    if lora is not None:  # frozen weights need no saved inputs: fewer activations per block
        per_block, once = gpt_lora_activation_change(micro_batch, s, h, shape.n_head, prec, lora.targets, lora.rank,
                                                     lora.dropout, shape.dropout)
        layer += per_block
    if checkpointing:
        # Full recomputation (Korthikanti et al., section 4.2): keep each block's input, and
        # one block's activations while it is recomputed in the backward pass.
        saved = shape.n_layer * micro_batch * s * h * prec.norm + layer
    else:  # (with recomputation the first block's and the head's savings are left out: a little over)
        saved = shape.n_layer * layer + once
    saved += gpt_output_activation_bytes(micro_batch, s, h, shape.vocab, prec)
    return saved, gpt_loss_backward_bytes(micro_batch, s, shape.vocab, prec)


def estimate_memory(facts: ModelFacts, prec: Precision, optimizer: str, momentum: float, strategy: str,
                    devices: int, nodes: int, micro_batch: int, activation_checkpointing: bool = False,
                    notes: list[str] | None = None) -> MemoryBreakdown:
    """Bytes per device for ``strategy`` on ``devices`` x ``nodes`` (see the module docstring)."""
    notes = notes if notes is not None else []
    P, n, T = facts.params, devices * nodes, facts.trainable  # T: parameters with gradients and optimizer states
    act_prec = prec
    host = 0
    if strategy.startswith("deepspeed"):
        # DeepSpeed keeps 16-bit weights and gradients and partitions fp32 master weights,
        # moments and gradients (S = 16 bytes per parameter for Adam, as in its estimators).
        wd = 2 if prec.half else prec.weight
        master = fp32_grads = 4 if prec.half else 0
        moments = optimizer_bytes_per_param(optimizer, PRECISIONS["32-true"], momentum)
        sharded = master + moments + fp32_grads
        largest = facts.largest_layer_params
        if strategy == "deepspeed_stage_2":
            weights, grads, opt = wd * P, wd * P + fp32_grads * P // n, (master + moments) * P // n
        elif strategy == "deepspeed_stage_2_offload":
            weights, grads, opt = wd * P, 0, 0
            host = int(P * max(4 * n, sharded) * OFFLOAD_BUFFER)
        elif strategy == "deepspeed_stage_3":
            weights, grads = wd * P // n + wd * largest, wd * largest + fp32_grads * P // n
            opt = (master + moments) * P // n
        else:  # deepspeed_stage_3_offload: Lightning offloads the optimizer and the parameters
            weights, grads, opt = wd * largest, wd * largest, 0
            host = int(P * (wd + sharded) / nodes * OFFLOAD_BUFFER)
        if prec.half:
            act_prec = PRECISIONS["bf16-true"]  # the model itself runs in 16 bits: no autocast
        other = 0
    else:
        w, g = prec.weight, prec.grad
        o = optimizer_bytes_per_param(optimizer, prec, momentum)
        if strategy.startswith("fsdp"):
            compute = 2 if prec.half else prec.weight
            # FULL_SHARD gathers one wrapped unit at a time (lab.strategies wraps each family block);
            # SHARD_GRAD_OP keeps every gathered unit until backward: the whole model.
            unit = facts.fsdp_unit_params or P if strategy == "fsdp" else P
            weights, grads, opt = w * P // n + compute * unit, g * P // n + compute * unit, o * P // n
            other = 0  # FSDP's mixed precision casts the parameters itself: no autocast copies
            if unit == P:
                notes.append(f"fsdp gathers all {P:,} parameters at once here (no blocks to wrap one by one, "
                             "or SHARD_GRAD_OP)")
        else:
            weights, grads, opt = w * P, g * T, o * T
            # Autocast's 16-bit weight copies (a traced model's trace already holds them).
            other = prec.cast * P if facts.shape is not None else 0
            if strategy == "ddp" and n > 1:
                other += g * T  # DDP's gradient buckets (gradient_as_bucket_view=False)
    saved, transient = activation_bytes(facts, act_prec, micro_batch, activation_checkpointing)
    if activation_checkpointing and facts.shape is None:
        notes.append(f"activation checkpointing is planned for transformer blocks only; {facts.name} is planned without")
    return MemoryBreakdown(int(weights), int(grads), int(opt), int(saved), int(other + transient), int(host))
