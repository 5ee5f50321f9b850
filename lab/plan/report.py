"""How a Plan reads: the text ``lab plan`` prints and the ``lab fit`` command it recommends.

    from lab.plan import plan
    from lab.plan.report import human_time
    print(plan("gpt2-124m", device="H100").to_text())     # calls plan_text
    human_time(5400)                                       # "1.5 h" (sizes: lab.units.human_bytes)
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from lab.config import Config
from lab.plan.formulas import PRECISIONS
from lab.units import human_bytes

if TYPE_CHECKING:
    from lab.plan import Plan  # only a type: lab.plan imports this module, never the other way


def human_count(n: float) -> str:
    """``1.2e12`` -> ``"1.20e+12"`` above a million, digits with commas below."""
    return f"{n:.3g}" if abs(n) >= 1e6 else f"{int(n):,}"


def human_time(seconds: float) -> str:
    """Seconds as s / min / h / days, whichever reads best."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.3g} s"


def recommendation_time(r: Any, p: Any = None) -> str:
    """How long the recommended setup trains, beside the planned one's when they differ: the
    recommendation has the fewest devices that fit, which is rarely the fastest."""
    mine = r.time_to_budget_s if r.budget else r.step_time_s
    what = f"{human_count(r.budget)} {p.model.unit if p is not None else 'units'} in" if r.budget else "step time"
    text = f"{what} {human_time(mine)}"
    if p is not None and (r.devices, r.nodes, r.strategy) != (p.devices, p.nodes, p.strategy):
        theirs = p.time_to_budget_s if r.budget else p.step_time_s
        if theirs:
            text += (f" (the {p.strategy} setup on {p.devices * p.nodes} devices above: {human_time(theirs)}; "
                     f"fewer devices take longer)" if mine > theirs else f" (the setup above: {human_time(theirs)})")
    return text


def _override_tokens(overrides: Iterable[str] | Mapping[str, Any]) -> list[str]:
    if isinstance(overrides, Mapping):
        return [tok for k, v in overrides.items() for tok in (f"--{k}", str(v))]
    return [str(t) for t in overrides]


def fit_command(p: Plan, label: str, overrides: Iterable[str] | Mapping[str, Any], cfg: Config,
                seq_len: int | None = None) -> str:
    """The ``lab fit`` command line that trains plan ``p`` (wrapped in ``lab launch`` for several nodes)."""
    t = cfg.trainer
    args = ["lab", "fit", "--config", label, *_override_tokens(overrides)]

    def opt(flag: str, value: Any, default: Any) -> None:
        if str(value) != str(default):
            args.extend([flag, str(value)])

    gpu = p.device.kind == "gpu"
    if gpu and t.accelerator not in ("gpu", "cuda"):
        args += ["--trainer.accelerator", "gpu"]
    if not gpu and t.accelerator not in ("cpu", "auto"):
        args += ["--trainer.accelerator", "cpu"]
    opt("--trainer.strategy", "auto" if p.strategy == "single" else p.strategy, t.strategy)
    opt("--trainer.devices", p.devices, t.devices)
    opt("--trainer.num_nodes", p.nodes, t.num_nodes)
    opt("--trainer.precision", p.precision, t.precision)
    opt("--optimizer.name", p.optimizer, cfg.optimizer.name)
    opt("--data.batch_size", p.micro_batch, cfg.data.batch_size)
    if seq_len is not None:
        args += ["--model.block_size", str(seq_len)]
    opt("--trainer.accumulate_grad_batches", p.accumulate, t.accumulate_grad_batches)
    if p.steps:
        opt("--trainer.max_steps", p.steps, t.max_steps)
    cmd = shlex.join(args)
    if p.nodes > 1:
        # `lab launch` starts one `lab fit` per node (torchrun or SLURM).
        cmd = f"lab launch --nodes {p.nodes} --gpus-per-node {p.devices} -- {cmd}"
    return cmd


def plan_text(p: Plan) -> str:
    """A readable report: the setup, memory per device against the device, compute, time, recommendation."""
    m, mem, acc = p.model, p.memory, p.device
    peak = acc.bf16_flops if PRECISIONS[p.precision].half else acc.fp32_flops
    lines = [
        f"model      {p.config}: {m.name}, {m.params:,} parameters"
        + (f" ({m.trainable:,} train: LoRA rank {m.finetune.rank} on {m.finetune.targets})" if m.finetune else "")
        + (f", seq {p.seq_len}" if m.unit == "tokens" else ""),
        f"setup      {p.strategy} on {p.devices} x {p.nodes} node(s) of {acc.name} ({acc.source}), "
        f"{p.precision}, {p.optimizer}, micro-batch {p.micro_batch} x accumulate {p.accumulate}"
        + (", activation checkpointing" if p.activation_checkpointing else ""),
        "",
        "memory per device",
    ]
    rows = [("weights", mem.weights), ("gradients", mem.gradients), ("optimizer states", mem.optimizer),
            ("activations", mem.activations), ("other (casts, buckets, loss backward)", mem.other),
            ("total", mem.total), ("device memory", acc.memory)]
    if mem.host:
        rows += [("host RAM per node for offload", mem.host), ("host RAM per node", p.host_memory)]
    width = max(len(r[0]) for r in rows)
    lines += [f"  {name.ljust(width)}  {human_bytes(value):>12}" for name, value in rows]
    share = p.headroom / acc.memory if acc.memory else 0.0
    verdict = "fits" if p.fits else "does NOT fit"
    lines.append(f"  {'verdict'.ljust(width)}  {verdict}, headroom {human_bytes(p.headroom)} ({share:.0%})"
                 + (" -- all processes of a node share the RAM" if acc.kind == "cpu" and p.devices > 1 else ""))
    compute = [(f"FLOPs per {m.unit[:-1]}", human_count(p.flops_per_unit)),
               (f"{m.unit} per step", f"{p.units_per_step:,}"),
               ("FLOPs per step", human_count(p.flops_per_step)),
               ("step time", f"{human_time(p.step_time_s)} at {p.mfu:.0%} MFU of {peak / 1e12:.3g} TFLOP/s per device "
                             f"({acc.source} peak)")]
    if p.budget:
        compute.append((f"to {human_count(p.budget)} {m.unit}", f"{p.steps:,} steps, {human_time(p.time_to_budget_s or 0)}"))
    w = max(len(k) for k, _ in compute)
    lines += ["", "compute"] + [f"  {k.ljust(w)}  {v}" for k, v in compute]
    r = p.recommendation
    if r:
        lines += ["", f"recommendation ({'fits' if r.fits else 'closest miss'}): {r.strategy} on {r.devices} device(s)"
                  f" x {r.nodes} node(s), {human_bytes(r.total)} per device, {recommendation_time(r, p)} -- {r.reason}",
                  f"  {r.command}"]
    if p.notes:
        lines += ["", "notes"] + [f"  - {n}" for n in dict.fromkeys(p.notes)]
    return "\n".join(lines)
