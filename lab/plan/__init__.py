"""Will a model fit, and how long will it train? Memory per device, FLOPs and time, before any work.

    from lab.plan import plan, recommend
    p = plan("gpt2-124m", precision="bf16-mixed", strategy="ddp", devices=8, device="H100", tokens="10B")
    p.params, p.memory.total, p.fits, p.step_time_s, p.time_to_budget_s
    print(p.to_text())                       # what `lab plan` prints; p.to_dict() for JSON
    rec = recommend("gpt2-124m", device="A100")
    rec.strategy, rec.devices, rec.command   # the smallest strategy x device count that fits, as a command

The formulas (with their sources) live in ``lab.plan.formulas``: 16 bytes per parameter for
mixed-precision Adam (ZeRO paper), DeepSpeed's ZeRO-2/3 estimators, Korthikanti et al.'s
per-layer activations adapted to the lab's GPT, PaLM's FLOPs per token. The model's numbers
(parameters, largest layer) come from building it on the ``meta`` device: no memory, no weights.
Models other than the GPT have no published formula here, so their activations and FLOPs are
traced on the meta device (saved-tensor hooks and ``FlopCounterMode``). How close the estimate
comes is measured, not assumed: ``tests/test_plan.py`` and ``benchmarks/plan_accuracy.py``.

The package's imports flow one way: this module imports the others and, at run time, none
imports it. ``lab.plan.report`` (the text and the ``lab fit`` command), ``lab.plan.memory``
(bytes per device), ``lab.plan.model`` (the model's numbers), ``lab.plan.formulas`` (the
published formulas), and ``lab.plan.measure`` (real allocations, for the tests and the
benchmark). The devices and their peaks come from ``lab.env.peak``, the precision names from
``lab.config``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from lab.config import PRECISIONS as PRECISION_NAMES
from lab.config import Config, load_config
from lab.env.bench import last as last_bench
from lab.env.peak import KNOWN_ACCELERATORS, Accelerator, known_accelerator, peak_flops
from lab.env.probe import host_memory as machine_memory
from lab.errors import ConfigError
from lab.families import family_of
from lab.optim import OPTIMIZERS
from lab.plan.formulas import PRECISIONS, Precision, optimizer_bytes_per_param
from lab.plan.memory import MemoryBreakdown, estimate_memory
from lab.plan.model import ModelFacts, model_facts
from lab.plan.report import fit_command, plan_text
from lab.units import GiB, human_bytes

STRATEGIES = ("single", "ddp", "fsdp", "fsdp_grad_op", "deepspeed_stage_2", "deepspeed_stage_2_offload",
              "deepspeed_stage_3", "deepspeed_stage_3_offload")
"""What the planner estimates; all but ``fsdp_grad_op`` are ``trainer.strategy`` values ``lab fit`` runs."""
FIT_MARGIN = 0.10
"""A plan fits when it leaves this share of device memory free: allocator fragmentation, the CUDA
context and communication buffers are not in the estimate."""
DEFAULT_MFU = 0.40
LORA_STRATEGIES = ("single", "ddp")
"""What ``lab fit`` trains LoRA with (``lab.strategies.check_supported`` refuses sharding it)."""


def accelerator(name: str | None = None) -> Accelerator:
    """The accelerator called ``name`` (a key of ``KNOWN_ACCELERATORS``, or cpu), or this machine's when None."""
    import torch

    if name is None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        total = torch.cuda.get_device_properties(0).total_memory
        known = known_accelerator(gpu)
        if known:
            return dataclasses.replace(known, name=gpu, memory=total, source="detected")
        peak = peak_flops("cuda")
        return Accelerator(gpu, total, peak, peak / 8, "gpu", "detected")
    if name is None or name.lower() == "cpu":
        total, _ = machine_memory()
        peak = peak_flops("cpu")
        # bf16 matmuls on CPUs with AMX/AVX512-BF16 run several times faster than fp32: use the
        # last `lab doctor --bench` measurement at this thread count when there is one.
        b = last_bench() or {}
        bf16 = b.get("cpu_matmul_bf16") if b.get("torch_threads") == torch.get_num_threads() else None
        return Accelerator("cpu", total or 0, bf16 if isinstance(bf16, float) else peak, peak, "cpu", "measured")
    for key, acc in KNOWN_ACCELERATORS.items():
        if key.lower() == name.lower():
            return acc
    raise ConfigError("device", name, f"one of {', '.join([*KNOWN_ACCELERATORS, 'cpu'])} (or leave it out to use this machine's)")


@dataclass
class Recommendation:
    """The smallest setup that fits, and the command that trains it."""

    strategy: str
    """Planner strategy name (see ``STRATEGIES``)."""
    devices: int
    """Devices per node."""
    nodes: int
    """Machines."""
    accumulate: int
    """Gradient accumulation that keeps the asked-for global batch."""
    fits: bool
    """False when nothing searched fits (the command is then the closest miss)."""
    total: int
    """Estimated bytes per device of the recommended setup."""
    command: str
    """``lab fit ...`` (or ``lab launch ... -- lab fit ...`` for several nodes)."""
    reason: str
    """One line: why this one."""
    step_time_s: float = 0.0
    """Estimated seconds per optimizer step of this setup (same MFU assumption as the plan)."""
    budget: int | None = None
    """Target tokens (or samples), if given."""
    time_to_budget_s: float | None = None
    """Estimated seconds to reach the budget on this setup: the fewest devices are rarely the fastest."""


@dataclass
class Plan:
    """Memory per device, compute and time for one way of training one model."""

    config: str
    """The preset or config file the model came from."""
    model: ModelFacts
    """Parameters, largest layer, FLOPs per unit and the tokens/samples unit."""
    precision: str
    """Lightning precision (32-true, bf16-mixed, 16-mixed, bf16-true, ...)."""
    optimizer: str
    """adamw or sgd."""
    strategy: str
    """single, ddp, fsdp, fsdp_grad_op, deepspeed_stage_{2,3}[_offload]."""
    devices: int
    """Devices per node."""
    nodes: int
    """Machines."""
    micro_batch: int
    """Samples per device per forward pass."""
    seq_len: int
    """Tokens per sample (1 for models that are not language models)."""
    accumulate: int
    """Micro-batches per optimizer step."""
    activation_checkpointing: bool
    """Recompute each block's activations in the backward pass (saves memory, costs a forward)."""
    device: Accelerator
    """What the plan is for."""
    memory: MemoryBreakdown
    """Bytes per device by kind."""
    fits: bool
    """``memory.total`` leaves at least ``FIT_MARGIN`` of the device's memory free (and offloaded
    states fit in ``host_memory``)."""
    host_memory: int
    """Host RAM per node that offloading is checked against (default: this machine's)."""
    headroom: int
    """Device memory minus the estimate, in bytes (negative: does not fit)."""
    flops_per_unit: float
    """Training FLOPs per token (or sample)."""
    units_per_step: int
    """Tokens (or samples) per optimizer step, all devices together."""
    flops_per_step: float
    """``flops_per_unit * units_per_step`` (x 4/3 with activation checkpointing: one more forward)."""
    mfu: float
    """Assumed model-FLOPs utilisation used for the times."""
    step_time_s: float
    """Estimated seconds per optimizer step."""
    budget: int | None
    """Target tokens (or samples), if given."""
    steps: int | None
    """Optimizer steps to reach the budget."""
    time_to_budget_s: float | None
    """Estimated seconds to reach the budget."""
    notes: list[str] = field(default_factory=list)
    """Assumptions worth knowing, one line each."""
    recommendation: Recommendation | None = None
    """The smallest setup that fits (``recommend``), when asked for."""

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes

    @property
    def host_fits(self) -> bool:
        """Offloaded states (if any) leave ``FIT_MARGIN`` of ``host_memory`` free."""
        return self.memory.host <= self.host_memory * (1 - FIT_MARGIN)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (``lab plan --json``)."""
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        """The report ``lab plan`` prints."""
        return plan_text(self)


def parse_count(value: Any, name: str = "tokens") -> int:
    """``"10B"``, ``"300M"``, ``"2.5e9"`` or a number -> an int (refused with a ConfigError otherwise)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        n = float(value)
    else:
        text = str(value).strip().upper().replace("_", "").replace(",", "")
        scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(text[-1:], 1.0)
        try:
            n = float(text[:-1] if scale != 1.0 else text) * scale
        except ValueError:
            raise ConfigError(name, value, "a count such as 2.5e9, 300M or 10B") from None
    if not math.isfinite(n) or n < 1:
        raise ConfigError(name, value, "a count >= 1 such as 2.5e9, 300M or 10B")
    return int(n)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, value, "a whole number >= 1")
    return value


def _strategy(name: str | None, cfg_strategy: str, world: int) -> str:
    name = name or cfg_strategy
    aliases = {"auto": "single" if world == 1 else "ddp", "ddp_spawn": "ddp", "ddp_notebook": "ddp",
               "ddp_fork": "ddp", "single_device": "single"}
    name = aliases.get(name, name)
    if name not in STRATEGIES:
        raise ConfigError("strategy", name, f"one of {', '.join(STRATEGIES)}")
    if name == "single" and world != 1:
        raise ConfigError("strategy", name, f"ddp, fsdp or deepspeed_* for {world} devices (single is one device)")
    return name


def plan(config: str | Path | Config = "gpt-nano", overrides: Iterable[str] | Mapping[str, Any] = (), *,
         precision: str | None = None, optimizer: str | None = None, strategy: str | None = None,
         devices: int | None = None, nodes: int | None = None, micro_batch: int | None = None,
         seq_len: int | None = None, accumulate: int | None = None, activation_checkpointing: bool = False,
         tokens: Any = None, device: str | Accelerator | None = None, mfu: float = DEFAULT_MFU,
         host_memory: Any = None, with_recommendation: bool = True) -> Plan:
    """Plan training ``config`` (preset name, YAML path or Config, plus dotted ``overrides``).

    Everything left as None is taken from the config: precision, optimizer, strategy (``auto``
    is single for one device, else ddp), devices, nodes, micro-batch (``data.batch_size``),
    sequence length (``model.block_size``), accumulation. ``device`` is a name from
    ``KNOWN_ACCELERATORS``, ``"cpu"``, or None for this machine's first GPU (else its CPU).
    ``host_memory`` (bytes, or ``"2T"``) is the RAM per node that CPU offload must fit in;
    default: this machine's. Bad values raise ``ConfigError`` naming the field.
    """
    # A copy: seq_len rewrites model.block_size, and a caller's Config must not change under it.
    cfg = copy.deepcopy(config) if isinstance(config, Config) else load_config(config, overrides)
    label = str(config) if not isinstance(config, Config) else cfg.experiment
    t = cfg.trainer
    precision = str(precision or t.precision)
    if precision not in PRECISION_NAMES:  # what a config accepts, so the recommended `lab fit` runs
        raise ConfigError("precision", precision, f"one of {', '.join(PRECISION_NAMES)}")
    optimizer = (optimizer or cfg.optimizer.name).lower()
    if optimizer not in OPTIMIZERS:
        raise ConfigError("optimizer", optimizer, f"one of {', '.join(OPTIMIZERS)}")
    devices = _positive("devices", devices if devices is not None else (t.devices if isinstance(t.devices, int) else 1))
    nodes = _positive("nodes", nodes if nodes is not None else t.num_nodes)
    micro_batch = _positive("micro_batch", micro_batch if micro_batch is not None else cfg.data.batch_size)
    accumulate = _positive("accumulate", accumulate if accumulate is not None else t.accumulate_grad_batches)
    if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
        raise ConfigError("mfu", mfu, "a fraction in (0, 1], e.g. 0.4")
    if seq_len is not None:
        _positive("seq_len", seq_len)
        if family_of(cfg).transformer is None or not hasattr(cfg.model, "block_size"):
            raise ConfigError("seq_len", seq_len, f"no value: model.name={cfg.model.name} has no sequence length")
        cfg.model.block_size = seq_len
    budget = parse_count(tokens) if tokens is not None else None
    host = parse_count(host_memory, "host_memory") if host_memory is not None else _this_host_memory()
    world = devices * nodes
    strategy = _strategy(strategy, t.strategy, world)
    if cfg.finetune.lora and strategy not in LORA_STRATEGIES:
        raise ConfigError("strategy", strategy, f"{' or '.join(LORA_STRATEGIES)} with finetune.method lora "
                          "(what lab fit trains LoRA with: lab.strategies.check_supported says why)")
    acc = device if isinstance(device, Accelerator) else accelerator(device)
    notes: list[str] = []
    facts = model_facts(cfg, micro_batch, notes)
    prec = PRECISIONS[precision]
    mem = estimate_memory(facts, prec, optimizer, cfg.optimizer.momentum, strategy, devices, nodes, micro_batch,
                          activation_checkpointing, notes)
    # Every process on one machine shares its RAM: on the CPU the node's processes add up.
    need = mem.total * (devices if acc.kind == "cpu" else 1)
    usable = acc.memory * (1 - FIT_MARGIN)
    units = micro_batch * facts.units_per_sample * world * accumulate
    recompute = 4 / 3 if activation_checkpointing and facts.shape is not None else 1.0
    flops_step = facts.flops_per_unit * units * recompute
    peak = acc.bf16_flops if prec.half else acc.fp32_flops
    step_time = flops_step / (world * peak * mfu)
    steps = math.ceil(budget / units) if budget else None
    fits = need <= usable and mem.host <= host * (1 - FIT_MARGIN)
    p = Plan(config=label, model=facts, precision=precision, optimizer=optimizer, strategy=strategy, devices=devices,
             nodes=nodes, micro_batch=micro_batch, seq_len=facts.units_per_sample, accumulate=accumulate,
             activation_checkpointing=activation_checkpointing, device=acc, memory=mem, fits=fits, host_memory=host,
             headroom=int(acc.memory - need), flops_per_unit=facts.flops_per_unit, units_per_step=units,
             flops_per_step=flops_step, mfu=mfu, step_time_s=step_time, budget=budget, steps=steps,
             time_to_budget_s=steps * step_time if steps else None, notes=notes)
    if mem.host:
        notes.append(f"offload needs {human_bytes(mem.host, 1)} of host RAM per node (DeepSpeed's estimate), checked "
                     f"against {human_bytes(host, 1)}" + ("" if host_memory is not None else " (this machine's: "
                     "pass host_memory / --host_memory for the training nodes)"))
    if acc.kind == "cpu" and acc.source == "measured" and (world > 1 or cfg.trainer.accelerator in ("gpu", "cuda")):
        notes.append("planned for this machine's CPU: pass device / --device (A100, H100, H200, L4) to plan for GPUs")
    if activation_checkpointing:
        notes.append("train it with --trainer.activation_checkpointing true: each block is recomputed in backward "
                     "(a third more compute, counted in the time)")
    if cfg.finetune.lora:
        notes.append(f"LoRA: only the {facts.trainable:,} trainable parameters ({facts.trainable / facts.params:.2%}) "
                     "have gradients and optimizer states; FLOPs and times are full training's (6N), an upper bound: "
                     "frozen weights skip their gradients")
    if not acc.bf16 and precision.startswith("bf16"):
        notes.append(f"{acc.name} has no bf16: train with 16-mixed / 16-true (same bytes, same fp16 peak)")
    if acc.kind == "cpu" and strategy.startswith(("deepspeed", "fsdp")):
        notes.append(f"{strategy} needs GPUs: on the CPU, lab fit runs single or ddp only")
    if acc.kind == "cpu" and prec.half:
        notes.append("CPU times use the measured fp32 matmul peak (`lab doctor --bench` measures bf16 too)"
                     if acc.bf16_flops == acc.fp32_flops else "CPU times use the bf16 matmul peak `lab doctor --bench` measured")
    if with_recommendation:
        p.recommendation = recommend(
            cfg, label=label, overrides=overrides, precision=precision, optimizer=optimizer, micro_batch=micro_batch,
            seq_len=seq_len, global_batch=micro_batch * world * accumulate, activation_checkpointing=activation_checkpointing,
            tokens=budget, device=acc, mfu=mfu, host_memory=host, gpus_per_node=devices if nodes > 1 else None)
    return p


def _this_host_memory() -> int:
    return machine_memory()[0] or 0


def _candidates(acc: Accelerator, gpus_per_node: int, max_nodes: int) -> Iterable[tuple[int, int, str]]:
    """(devices per node, nodes, strategy), smallest device count first, simplest strategy first."""
    if acc.kind == "cpu":
        # More processes on one machine share the same RAM: only one device can help.
        yield 1, 1, "single"
        return
    counts = [(n, 1) for n in (1, 2, 4, 8, 16) if n <= gpus_per_node]
    if gpus_per_node not in [c for c, _ in counts]:
        counts.append((gpus_per_node, 1))
    nodes = 2
    while nodes <= max_nodes:
        counts.append((gpus_per_node, nodes))
        nodes *= 2
    for devices, nodes in counts:
        order = ["single"] if devices * nodes == 1 else ["ddp", "deepspeed_stage_2", "fsdp", "deepspeed_stage_3"]
        for s in [*order, "deepspeed_stage_2_offload", "deepspeed_stage_3_offload"]:
            yield devices, nodes, s


def recommend(config: str | Path | Config = "gpt-nano", *, label: str | None = None,
              overrides: Iterable[str] | Mapping[str, Any] = (), precision: str | None = None,
              optimizer: str | None = None, micro_batch: int | None = None, seq_len: int | None = None,
              global_batch: int | None = None,
              activation_checkpointing: bool = False, tokens: Any = None, device: str | Accelerator | None = None,
              mfu: float = DEFAULT_MFU, host_memory: Any = None, gpus_per_node: int | None = None,
              max_nodes: int = 64) -> Recommendation:
    """The fewest devices, then the simplest strategy, that fit, with the ``lab fit`` command line.

    Searches 1, 2, 4, 8 devices on one node (up to ``gpus_per_node``, default 8), then
    2, 4, ... ``max_nodes`` nodes; strategies in order single/ddp, ZeRO-2, FSDP, ZeRO-3, then
    CPU offload; each at ``micro_batch``, then at half of it, down to 1, with the accumulation
    that keeps ``global_batch`` (default: the config's).
    """
    cfg = copy.deepcopy(config) if isinstance(config, Config) else load_config(config, overrides)
    if seq_len is not None:
        cfg.model.block_size = _positive("seq_len", seq_len)
    label = label or (str(config) if not isinstance(config, Config) else cfg.experiment)
    acc = device if isinstance(device, Accelerator) else accelerator(device)
    mb = micro_batch or cfg.data.batch_size
    t = cfg.trainer
    target = global_batch or mb * (t.devices if isinstance(t.devices, int) else 1) * t.num_nodes * t.accumulate_grad_batches
    best: Plan | None = None
    # A smaller micro-batch (accumulation keeps the global batch) costs less than another device or
    # offloading: each setup is tried at micro_batch, then at half of it, down to 1.
    batches = [mb]
    while batches[-1] > 1:
        batches.append(batches[-1] // 2)
    for devices, nodes, strategy in _candidates(acc, gpus_per_node or 8, max_nodes):
        if cfg.finetune.lora and strategy not in LORA_STRATEGIES:
            continue
        for b in batches:
            accumulate = max(1, round(target / (b * devices * nodes)))
            p = plan(cfg, precision=precision, optimizer=optimizer, strategy=strategy, devices=devices, nodes=nodes,
                     micro_batch=b, accumulate=accumulate, activation_checkpointing=activation_checkpointing,
                     tokens=tokens, device=acc, mfu=mfu, host_memory=host_memory, with_recommendation=False)
            p.config = label
            if p.fits:
                smaller = f" at micro-batch {b} (accumulation keeps the global batch)" if b != mb else ""
                return _recommendation(p, label, overrides, cfg, seq_len, True,
                                       f"the fewest {acc.name} devices, and the simplest strategy, that leave "
                                       f"{FIT_MARGIN:.0%} of memory free{smaller}")
            # The closest miss: least device memory among setups whose host RAM suffices.
            if best is None or (not p.host_fits, p.memory.total) < (not best.host_fits, best.memory.total):
                best = p
    assert best is not None
    return _recommendation(best, label, overrides, cfg, seq_len, False,
                           "nothing searched fits even at micro-batch 1: turn on activation checkpointing, use a "
                           "lower precision, or more nodes; this is the closest miss")


def _recommendation(p: Plan, label: str, overrides: Iterable[str] | Mapping[str, Any], cfg: Config,
                    seq_len: int | None, fits: bool, reason: str) -> Recommendation:
    return Recommendation(strategy=p.strategy, devices=p.devices, nodes=p.nodes, accumulate=p.accumulate, fits=fits,
                          total=p.memory.total, command=fit_command(p, label, overrides, cfg, seq_len), reason=reason,
                          step_time_s=p.step_time_s, budget=p.budget, time_to_budget_s=p.time_to_budget_s)


__all__ = ["Accelerator", "KNOWN_ACCELERATORS", "Plan", "Recommendation", "accelerator", "parse_count", "plan",
           "recommend", "STRATEGIES", "MemoryBreakdown", "ModelFacts", "Precision", "PRECISIONS", "GiB",
           "optimizer_bytes_per_param"]
