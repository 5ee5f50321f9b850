"""The published memory and compute formulas behind ``lab plan``, as pure functions of numbers.

    from lab.plan.formulas import PRECISIONS, zero_model_states, deepspeed_zero2_estimate, gpt_layer_activation_bytes
    zero_model_states(7.5e9, stage=0, dp=64)          # 120e9 bytes: the ZeRO paper's baseline
    deepspeed_zero2_estimate(1.5e9, gpus_per_node=8)    # (cpu_bytes, gpu_bytes), as DeepSpeed prints them
    gpt_layer_activation_bytes(micro_batch=16, seq_len=1024, n_embd=768, n_head=12,
                               precision=PRECISIONS["bf16-mixed"])    # one block's saved activations

Sources:

- Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter Models",
  section 3.1 and figure 1: mixed-precision Adam keeps 2 + 2 + K bytes per parameter (fp16
  weights, fp16 gradients, K = 12 bytes of fp32 master weights, momentum and variance), i.e.
  16 bytes; the three ZeRO stages divide the optimizer states, then the gradients, then the
  weights by the data-parallel degree.
- DeepSpeed's own estimators, ``deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs``
  and ``deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs`` (reproduced exactly).
- Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  section 4.1: a transformer layer saves ``s*b*h*(34 + 5*a*s/h)`` bytes of 16-bit activations.
- Chowdhery et al. 2022 (PaLM), appendix B: ``6*N + 12*L*h*s`` training FLOPs per token.
- Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models": frozen weights need no
  gradients or optimizer states; what LoRA saves in activations is the lab's own count
  (``gpt_lora_activation_change``), checked against autograd's saved tensors.

Everything here is arithmetic on numbers; ``lab.plan`` supplies the model's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.config import PRECISIONS as PRECISION_NAMES
from lab.finetune import KINDS, kinds


@dataclass(frozen=True)
class Precision:
    """Bytes per element that a Lightning precision setting keeps, tensor kind by tensor kind."""

    weight: int
    """A parameter as stored (fp32 under ``*-mixed``: autocast casts on the fly)."""
    grad: int
    """A gradient (same dtype as its parameter in plain PyTorch)."""
    moment: int
    """One optimizer-state tensor: torch keeps Adam's/SGD's moments in the parameter's dtype."""
    act: int
    """An activation saved by a matmul or attention (bf16/fp16 under autocast)."""
    norm: int
    """A LayerNorm input: autocast runs LayerNorm in fp32, so the residual stream stays fp32."""
    loss: int
    """The log-softmax cross-entropy saves: autocast runs it in fp32."""
    cast: int
    """Autocast's per-weight low-precision copy, cached from the forward until the backward."""
    half: bool
    """Matmuls run in 16 bits, so the accelerator's bf16/fp16 peak applies."""


def precision_bytes(name: str) -> Precision:
    """Bytes per element under Lightning precision ``name`` (``bf16-mixed``, ``32-true``, ``32``, ...).

    ``*-true`` (and a bare width such as ``32``) keeps every tensor at that width; ``*-mixed``
    keeps fp32 parameters, gradients and optimizer states and runs the matmuls in 16 bits
    under autocast, which keeps norms and the loss in fp32 and caches a 16-bit copy of each weight.
    """
    width, _, mode = name.partition("-")
    size = {"64": 8, "32": 4, "16": 2, "bf16": 2}[width]
    if mode == "mixed":
        return Precision(4, 4, 4, size, 4, 4, size, True)
    return Precision(size, size, size, size, size, size, 0, size == 2)


PRECISIONS: dict[str, Precision] = {name: precision_bytes(name) for name in PRECISION_NAMES}
"""Each precision a config accepts (``lab.config.PRECISIONS``, the one list of names) -> bytes per element."""


def optimizer_bytes_per_param(optimizer: str, precision: Precision, momentum: float = 0.9) -> int:
    """Optimizer-state bytes per parameter in plain PyTorch: AdamW keeps two moments, SGD one (if momentum > 0)."""
    if optimizer == "adamw":
        return 2 * precision.moment
    return precision.moment if momentum > 0 else 0


def zero_model_states(params: float, stage: int, dp: int, k: int = 12) -> float:
    """Model-state bytes per device for mixed-precision Adam under ZeRO ``stage`` (ZeRO paper, figure 1).

    ``2*P`` fp16 weights + ``2*P`` fp16 gradients + ``K*P`` optimizer states (K = 12: fp32 master
    weights, momentum, variance). Stage 0 is plain data parallelism (16 bytes per parameter);
    stage 1 (P_os) divides the optimizer states by the data-parallel degree ``dp``, stage 2
    (P_os+g) also the gradients, stage 3 (P_os+g+p) also the weights. The paper's example,
    a 7.5B model on 64 GPUs: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB.
    """
    if stage == 0:
        return (2 + 2 + k) * params
    if stage == 1:
        return 2 * params + 2 * params + k * params / dp
    if stage == 2:
        return 2 * params + (2 + k) * params / dp
    if stage == 3:
        return (2 + 2 + k) * params / dp
    raise ValueError(f"ZeRO stage is 0, 1, 2 or 3, not {stage}")


def deepspeed_zero2_estimate(params: float, gpus_per_node: int = 1, nodes: int = 1, cpu_offload: bool = False,
                             buffer_factor: float = 1.5) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes per device) of ZeRO-2 model states, as DeepSpeed estimates them.

    ``estimate_zero2_model_states_mem_needs`` in DeepSpeed: without offload each GPU holds
    ``4*P`` (fp16 weights and gradients) plus ``16*P / gpus`` (its partition of fp32 master
    weights, Adam moments and fp32 gradients); with the optimizer offloaded only ``2*P`` stays
    on the GPU and the host needs ``P * max(4 * gpus, 16) * 1.5``.
    """
    total_gpus = gpus_per_node * nodes
    if cpu_offload:
        gpu = 2 * params
        cpu = params * max(4 * total_gpus, 16) * buffer_factor
    else:
        gpu = 4 * params + int(16 * params / total_gpus)
        cpu = params * 4 * gpus_per_node * buffer_factor
    return int(cpu), int(gpu)


def deepspeed_zero3_estimate(params: float, largest_layer_params: float, gpus_per_node: int = 1, nodes: int = 1,
                             cpu_offload: bool = False, cpu_offload_params: bool = False, zero_init: bool = True,
                             buffer_factor: float = 1.5) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes per device) of ZeRO-3 model states, as DeepSpeed estimates them.

    ``estimate_zero3_model_states_mem_needs`` in DeepSpeed: each GPU holds the gathered
    largest layer (``4 * largest_layer_params``: fp16 weights and gradients) plus ``18*P / gpus``
    (fp16 weight partition + fp32 master, moments and gradients); offloading the optimizer
    leaves ``2*P / gpus`` of weights, offloading the parameters too leaves only the largest layer.
    """
    total_gpus = gpus_per_node * nodes
    gpus_factor = 1 / nodes
    largest = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu = largest
            per = 18 * gpus_factor if zero_init else max(4 * gpus_per_node, 18 * gpus_factor)
        else:
            gpu = largest + int(2 * params / total_gpus)
            per = 16 * gpus_factor if zero_init else max(4 * gpus_per_node, 16 * gpus_factor)
        cpu = params * per * buffer_factor
    else:
        gpu = largest + int(18 * params / total_gpus)
        cpu = (largest_layer_params if zero_init else params) * 4 * gpus_per_node * buffer_factor
    return int(cpu), int(gpu)


def gpt_layer_activation_bytes(micro_batch: int, seq_len: int, n_embd: int, n_head: int, precision: Precision,
                               dropout: float = 0.0) -> int:
    """Activation bytes one of the lab's GPT blocks saves for its backward pass.

    Korthikanti et al. 2022 (section 4.1) count, for 16-bit activations, ``sbh(34 + 5as/h)``:
    attention ``11sbh + 5as^2b`` (LayerNorm output 2, Q and K 4, V 2, softmax output ``2as^2b``
    and its dropout mask ``as^2b``, attention-over-V dropout output ``2as^2b``, projection input 2,
    dropout mask 1), MLP ``19sbh`` (inputs of both linears 2 + 8, GELU input 8, dropout mask 1)
    and LayerNorm inputs ``4sbh``. Adapted to the lab's GPT:

    - ``F.scaled_dot_product_attention`` uses a flash / memory-efficient kernel, which saves
      Q, K, V, the output and a fp32 log-sum-exp per head and row (``4asb`` bytes) instead of
      the ``s x s`` softmax: the ``5as^2b`` term is gone (and attention dropout is done in-kernel);
    - with ``dropout = 0`` (the lab's default) there are no dropout masks; otherwise two
      one-byte masks per layer (after attention and after the MLP);
    - element sizes follow the precision: 14 ``sbh`` elements saved by matmuls/attention at
      ``act`` bytes (c_attn input 1, Q/K/V 3, attention output = c_proj input 1, c_fc input 1,
      GELU input 4, MLP c_proj input 4) and the two LayerNorm inputs at ``norm`` bytes (fp32 under
      autocast): ``sbh(14*act + 2*norm)`` = 32 sbh in bf16-true, 36 in bf16-mixed, 64 in fp32,
      plus the LayerNorms' fp32 mean and rstd (``16sb``).
    """
    sbh = micro_batch * seq_len * n_embd
    saved = sbh * (14 * precision.act + 2 * precision.norm) + 4 * n_head * seq_len * micro_batch + 16 * micro_batch * seq_len
    if dropout > 0:
        saved += 2 * sbh
    return int(saved)


def gpt_lora_activation_change(micro_batch: int, seq_len: int, n_embd: int, n_head: int, precision: Precision,
                               targets: str, rank: int, lora_dropout: float = 0.0,
                               dropout: float = 0.0) -> tuple[int, int]:
    """How LoRA (frozen base, adapters on ``targets``) changes the saved activations: (per block, once).

    Autograd saves a matmul's input only to compute its weight's gradient, so with the base
    frozen (measured on the lab's GPT, ``tests/test_plan.py``):

    - per block: a frozen Linear's input is not saved -- c_attn's (1 ``sbh``) without attention
      adapters, c_fc's and the MLP c_proj's (1 + 4) without MLP adapters; the attention output
      (c_proj's input) stays, SDPA's backward keeps it. Each adapter adds A's output
      (``sbr`` elements, B's gradient needs it); LoRA dropout adds a one-byte mask per input element
      (as the fused GPU kernel keeps it; on the CPU, dropout keeps its mask in the input's dtype);
    - once: nothing before the first adapter runs backward -- the first block's ln_1 (and, with
      MLP adapters only, its whole attention half: Q, K, V, output, log-sum-exp, ln_2, the dropout
      mask and autocast's copies of its weights); the frozen LM head's input is not saved (ln_f's
      input still is).
    """
    sb, sbh = micro_batch * seq_len, micro_batch * seq_len * n_embd
    act, norm = precision.act, precision.norm
    attention, mlp = (kind in kinds(targets) for kind in KINDS)
    per_block = -(0 if attention else sbh * act) - (0 if mlp else 5 * sbh * act)
    per_block += ((2 if attention else 0) + (2 if mlp else 0)) * sb * rank * act
    if lora_dropout > 0:
        # A one-byte mask per adapter input element (widths: c_attn h, c_proj h; c_fc h, MLP c_proj 4h);
        # A then saves the dropped input instead of the input, except after attention, which SDPA keeps.
        per_block += sb * n_embd * ((2 if attention else 0) + (5 if mlp else 0)) + (sbh * act if attention else 0)
    once = -(sbh * norm + 8 * sb) - sbh * act
    if not attention:
        once -= 4 * sbh * act + 4 * n_head * sb + sbh * norm + 8 * sb + (sbh if dropout > 0 else 0)
        once -= 4 * n_embd * n_embd * precision.cast  # autocast keeps no copy of frozen weights no backward uses
    return int(per_block), int(once)


def gpt_output_activation_bytes(micro_batch: int, seq_len: int, n_embd: int, vocab_size: int,
                                precision: Precision) -> int:
    """Bytes saved after the blocks: final LayerNorm input, LM-head input and cross-entropy's log-softmax.

    Korthikanti et al. count ``4sbv`` for the output layer (fp32 logits for the loss); here the
    log-softmax is saved at ``loss`` bytes (fp32 under autocast), plus ``sbh`` at ``norm`` and ``act``.
    """
    sb = micro_batch * seq_len
    return int(sb * n_embd * (precision.norm + precision.act) + sb * vocab_size * precision.loss)


def gpt_loss_backward_bytes(micro_batch: int, seq_len: int, vocab_size: int, precision: Precision) -> int:
    """Transient bytes at the start of the backward pass: the gradients of the log-softmax and of the logits.

    Not in Korthikanti et al. (they count what is saved, not what the backward allocates), but
    for small models with a large vocabulary (GPT-2: v = 65 h) these ``sbv`` buffers set the peak.
    """
    return int(2 * micro_batch * seq_len * vocab_size * precision.loss)


def gpt_flops_per_token(non_embedding_params: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Training FLOPs per token, forward + backward: ``6N + 12*L*h*s`` (PaLM, appendix B; nanoGPT's MFU).

    Same formula as ``GPT.flops_per_token`` (which uses ``block_size`` for ``s``).
    """
    return 6 * non_embedding_params + 12 * n_layer * n_embd * seq_len
