"""GPU check: GPT-2 124M in bf16-mixed through ``lab.train.fit`` -- throughput, MFU, peak memory vs ``lab plan``.

    python benchmarks/gpu_check.py                 # one GPU, under 8 minutes on an H100/H200
    python benchmarks/gpu_check.py --steps 40 --record    # also append the table to benchmarks/RESULTS.md

Five short runs of the gpt2-124m preset (12 layers, 768 wide, block 1024, micro-batch 16, no
accumulation, validation one batch at the end, no step checkpoints), each a real ``fit``:

- ``compiled``: bf16-mixed with ``trainer.compile`` (the setup for the MFU goal);
- ``eager``: the same without torch.compile;
- ``fsdp-1``: FSDP on one device (blocks auto-wrapped, bf16 params/reductions/buffers);
- ``act-ckpt``: activation checkpointing of every block (eager);
- ``lora``: LoRA fine-tuning, rank 8 in attention and MLP (eager; issue 21's GPU point: throughput
  and peak memory of a LoRA run against ``lab plan``, which counts trainable parameters only).

Throughput and MFU are the runs' own ``summary.json`` figures (after a 5-step warm-up, which
also leaves out compilation; MFU against the GPU's published dense bf16 peak, ``lab.env``).
Peak memory is ``torch.cuda.max_memory_allocated`` over each run, next to ``lab plan``'s
estimate for the same setup. Goal on H100/H200: MFU >= 0.40 for ``compiled`` (nanoGPT reports
about 0.37 on an A100). Prints PASS / BELOW-GOAL and exits 0; with no GPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GOAL_MFU = 0.40
CASES = {
    "compiled": {"trainer.compile": True},
    "eager": {},
    "fsdp-1": {"trainer.strategy": "fsdp"},
    "act-ckpt": {"trainer.activation_checkpointing": True},
    "lora": {"finetune.method": "lora", "finetune.rank": 8, "finetune.targets": "both"},
}
RESULTS = Path(__file__).with_name("RESULTS.md")


def run_case(name: str, steps: int, micro_batch: int, runs_dir: str) -> dict:
    from lab.config import load_config
    from lab.plan import plan
    from lab.train import fit

    extra = CASES[name]
    overrides = {"trainer.max_steps": steps, "trainer.accelerator": "gpu", "trainer.devices": 1,
                 "trainer.precision": "bf16-mixed", "trainer.accumulate_grad_batches": 1,
                 "trainer.val_check_interval": steps, "trainer.limit_val_batches": 1,
                 "trainer.checkpoint_every_n_steps": None, "optimizer.warmup_steps": 10,
                 "data.batch_size": micro_batch, **extra}
    cfg = load_config("gpt2-124m", overrides)
    estimate = plan(cfg, strategy="fsdp" if extra.get("trainer.strategy") == "fsdp" else "single", devices=1,
                    micro_batch=micro_batch, accumulate=1,
                    activation_checkpointing=bool(extra.get("trainer.activation_checkpointing")),
                    with_recommendation=False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    run = fit(cfg, runs_root=runs_dir, progress=False, test=False)
    tp = run.summary.get("throughput", {})
    return {"case": name, "tokens_per_sec": tp.get("tokens_per_sec", float("nan")), "mfu": tp.get("mfu", float("nan")),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "plan_gib": estimate.memory.total / 2**30,
            "wall_s": time.time() - start, "val_loss": run.summary.get("final", {}).get("val/loss")}


def table(rows: list[dict]) -> str:
    head = "| case | tokens/s | MFU | peak memory | lab plan estimate | peak / plan | wall |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['tokens_per_sec']:,.0f} | {r['mfu']:.1%} | {r['peak_gib']:.2f} GiB | "
                     f"{r['plan_gib']:.2f} GiB | {r['peak_gib'] / r['plan_gib']:.2f}x | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per case")
    ap.add_argument("--micro_batch", type=int, default=16, help="sequences of 1024 tokens per step")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    ap.add_argument("--budget_s", type=float, default=420, help="skip the remaining cases after this many seconds")
    ap.add_argument("--record", action="store_true", help=f"append the table to {RESULTS.name}")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}): run it on a machine with an NVIDIA GPU and a CUDA build of torch",
              file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.cuda.get_device_name(0)
    print(f"{device}, torch {torch.__version__}, {args.steps} steps x micro-batch {args.micro_batch} x 1024 tokens",
          flush=True)
    rows: list[dict] = []
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in [c for c in args.cases.split(",") if c]:
            if time.time() - began > args.budget_s:
                rows.append({"case": name, "error": f"skipped: over the {args.budget_s:.0f} s budget"})
                continue
            try:
                rows.append(run_case(name, args.steps, args.micro_batch, tmp))
            except Exception as e:  # one failing setup must not hide the others' figures
                traceback.print_exc()
                rows.append({"case": name, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    best = max((r["mfu"] for r in rows if "error" not in r), default=float("nan"))
    verdict = "PASS" if best >= GOAL_MFU else "BELOW-GOAL"
    print("\n" + text + f"\n\nbest MFU {best:.1%}, goal >= {GOAL_MFU:.0%}: {verdict}")
    if args.record:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(f"\n## gpu_check, {stamp}, {device}, torch {torch.__version__}\n\n{text}\n\n"
                    f"best MFU {best:.1%} (goal >= {GOAL_MFU:.0%}): {verdict}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
