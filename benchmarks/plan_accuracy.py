"""How close ``lab plan``'s memory estimates come to what training really allocates.

    python benchmarks/plan_accuracy.py                 # CPU: about a minute on 2 cores
    python benchmarks/plan_accuracy.py --json out.json # also write the rows
    python benchmarks/plan_accuracy.py --device cpu    # force the CPU cases on a GPU machine

For each case the lab's LightningModule trains a few steps with a Lightning Trainer on this
machine's first device (``lab.plan.measure.measure``), and ``lab.plan.plan`` estimates the
same setup (single device). Two ratios, estimate / measured:

- model states: parameters + gradients + optimizer states, counted from the tensors
  themselves before the last optimizer step;
- total: the planner's total per device against the peak allocated while training --
  ``torch.cuda.max_memory_allocated`` on a GPU, on the CPU the peak of the profiler's
  allocation events (``torch.profiler``, ``profile_memory=True``).

Goal: totals within +-15% on a GPU (the CPU cases use the same formulas on smaller shapes).
The script prints PASS / OFF-GOAL per row and always exits 0: a benchmark measures, it does
not assert (``tests/test_plan.py`` asserts the model-state bytes within 5%).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: put the repo root before site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lab.config import load_config  # noqa: E402
from lab.plan import plan  # noqa: E402
from lab.plan.measure import measure  # noqa: E402

GOAL = 0.15
SMALL = {"model.vocab_size": 512, "model.n_layer": 4, "model.n_embd": 256, "model.n_head": 4,
         "model.block_size": 256, "data.batch_size": 8}
BIG_VOCAB = {"model.vocab_size": 8192, "model.n_layer": 2, "model.n_embd": 128, "model.n_head": 4,
             "model.block_size": 128, "data.batch_size": 8}
STATES = {"model.vocab_size": 512, "model.n_layer": 4, "model.n_embd": 512, "model.n_head": 8,
          "model.block_size": 32, "data.batch_size": 1}
CPU_CASES = [
    ("gpt 3M, fp32, adamw", "gpt-nano", SMALL, "32-true"),
    ("gpt 3M, bf16-mixed, adamw", "gpt-nano", SMALL, "bf16-mixed"),
    ("gpt 3M, bf16-true, sgd", "gpt-nano", {**SMALL, "optimizer.name": "sgd"}, "bf16-true"),
    ("gpt, 8k vocab, fp32", "gpt-nano", BIG_VOCAB, "32-true"),
    ("gpt 13M, mb 1 (model states dominate)", "gpt-nano", STATES, "32-true"),
    ("digits-cnn, fp32", "digits-cnn", {"data.batch_size": 64}, "32-true"),
    ("digits-vit, bf16-mixed", "digits-vit", {"data.batch_size": 64}, "bf16-mixed"),
]
GPU_CASES = [
    ("gpt2-124m, bf16-mixed, mb 8", "gpt2-124m", {"data.batch_size": 8}, "bf16-mixed"),
    ("gpt2-124m, fp32, mb 4", "gpt2-124m", {"data.batch_size": 4}, "32-true"),
    ("gpt2-124m, bf16-true, mb 8", "gpt2-124m", {"data.batch_size": 8}, "bf16-true"),
    ("gpt 350M, bf16-mixed, mb 4", "gpt2-124m",
     {"data.batch_size": 4, "model.n_layer": 24, "model.n_embd": 1024, "model.n_head": 16}, "bf16-mixed"),
    ("gpt2-124m, bf16-mixed, mb 4 x acc 2", "gpt2-124m",
     {"data.batch_size": 4, "trainer.accumulate_grad_batches": 2}, "bf16-mixed"),
]


def run_case(name: str, preset: str, overrides: dict[str, Any], precision: str, device: str, steps: int) -> dict:
    cfg = load_config(preset, overrides)
    start = time.perf_counter()
    m = measure(cfg, precision, steps=steps, accelerator=device)
    est = plan(cfg, precision=precision, strategy="single", devices=1, nodes=1, device="cpu" if device == "cpu" else None,
               with_recommendation=False)
    return {
        "case": name, "precision": precision, "params": est.model.params, "device": m.device,
        "states_est": est.memory.model_states, "states_meas": m.model_states,
        "states_ratio": est.memory.model_states / m.model_states,
        "total_est": est.memory.total, "peak_meas": m.peak, "total_ratio": est.memory.total / m.peak if m.peak else None,
        "method": m.method, "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per case (>= 2: optimizer states exist)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    cases = GPU_CASES + CPU_CASES[-2:] if args.device == "cuda" else CPU_CASES
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"plan accuracy on {where}, torch {torch.__version__}, {args.steps} steps per case\n", flush=True)
    rows = []
    for case in cases:
        rows.append(run_case(*case, device=args.device, steps=args.steps))
    header = f"{'case':<40} {'params':>11} {'states est/meas':>16} {'total est':>10} {'peak meas':>10} {'ratio':>6}  goal"
    print(header)
    print("-" * len(header))
    for r in rows:
        ok = r["total_ratio"] is not None and abs(r["total_ratio"] - 1) <= GOAL
        print(f"{r['case']:<40} {r['params']:>11,} {r['states_ratio']:>16.3f} {r['total_est'] / 2**20:>8.1f}Mi "
              f"{(r['peak_meas'] or 0) / 2**20:>8.1f}Mi {r['total_ratio'] or 0:>6.3f}  {'PASS' if ok else 'OFF-GOAL'}")
    print(f"\npeak measured with: {rows[0]['method']}; goal: total estimate within +-{GOAL:.0%} of the peak")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
