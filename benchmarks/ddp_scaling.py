"""DDP on CPU: 1 process x 2 threads against 2 processes x 1 thread, on the same global batch.

    python benchmarks/ddp_scaling.py                  # about 2 minutes on 2 quiet cores
    python benchmarks/ddp_scaling.py --steps 300 --repeats 3

Both sides run ``lab.train.fit`` on the gpt-nano preset (global batch 12: 12 x 1 process, or
6 x 2 processes through Lightning's ``ddp`` launcher and gloo), validation reduced to one batch
at the end, no step checkpoints. Throughput is the run's own ``summary.json`` figure (tokens/s
after warm-up, all ranks). The sides alternate ``--repeats`` times and medians are compared.

All-reduce share: after training, rank 0 times a gloo all-reduce of one flat fp32 tensor the
size of the model's gradients (what DDP reduces every step, here unbucketed and not
overlapped with backward, so an upper bound) and divides by the measured step time.

Goal: throughput ratio (2 procs / 1 proc) >= 0.8, since both use the same 2 cores. Prints a
table with PASS / BELOW-GOAL and always exits 0: a benchmark measures, it does not assert.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402

GOAL = 0.8
GLOBAL_BATCH = 12


class AllReduceProbe(L.Callback):
    """Times an all-reduce of the gradient-sized buffer once training is over (all ranks take part)."""

    def __init__(self, reps: int = 20) -> None:
        self.reps, self.seconds = reps, None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        import torch.distributed as dist

        n = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        buf = torch.ones(n)
        dist.all_reduce(buf)  # warm the connection
        dist.barrier()
        start = time.perf_counter()
        for _ in range(self.reps):
            dist.all_reduce(buf)
        self.seconds = (time.perf_counter() - start) / self.reps


def one_run(mode: str, steps: int, runs_dir: str) -> None:
    """Child entry: train once and print a JSON line (rank 0 only)."""
    from lab.config import load_config
    from lab.train import fit

    ddp = mode == "ddp"
    torch.set_num_threads(1 if ddp else 2)
    cfg = load_config("gpt-nano", {
        "trainer.max_steps": steps, "trainer.accelerator": "cpu", "trainer.val_check_interval": steps,
        "trainer.limit_val_batches": 1, "trainer.checkpoint_every_n_steps": None,
        "data.batch_size": GLOBAL_BATCH // 2 if ddp else GLOBAL_BATCH,
        **({"trainer.strategy": "ddp", "trainer.devices": 2} if ddp else {})})
    probe = AllReduceProbe()
    run = fit(cfg, runs_root=runs_dir, callbacks=[probe], progress=False, test=False)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        tps = run.summary["throughput"].get("tokens_per_sec", 0.0)
        print("RESULT " + json.dumps({"tokens_per_sec": tps, "allreduce_s": probe.seconds,
                                      "tokens_per_step": GLOBAL_BATCH * cfg.model.block_size}), flush=True)


def measure(mode: str, steps: int, runs_dir: str) -> dict:
    threads = "1" if mode == "ddp" else "2"
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(steps), "--runs_dir", runs_dir],
                         env=env, capture_output=True, text=True, timeout=1800)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, alternated")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--runs_dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        one_run(args.child, args.steps, args.runs_dir)
        return
    results: dict[str, list[dict]] = {"single": [], "ddp": []}
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        for i in range(args.repeats):
            for mode in (("single", "ddp") if i % 2 == 0 else ("ddp", "single")):
                results[mode].append(measure(mode, args.steps, tmp))
                print(f"  {mode:6s} run {i + 1}: {results[mode][-1]['tokens_per_sec']:.0f} tokens/s", flush=True)
    single = statistics.median(r["tokens_per_sec"] for r in results["single"])
    ddp = statistics.median(r["tokens_per_sec"] for r in results["ddp"])
    ratio = ddp / single if single else float("nan")
    ar = statistics.median(r["allreduce_s"] for r in results["ddp"] if r["allreduce_s"] is not None)
    step_s = results["ddp"][0]["tokens_per_step"] / ddp
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\ngpt-nano, global batch {GLOBAL_BATCH}, {args.steps} steps x {args.repeats} runs per side, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f}")
    rows = [("1 process x 2 threads", f"{single:,.0f}", "-", "-"),
            ("2 processes x 1 thread (ddp, gloo)", f"{ddp:,.0f}", f"{step_s * 1e3:.1f} ms",
             f"{ar * 1e3:.2f} ms ({ar / step_s:.1%} of a step)")]
    widths = [max(len(r[i]) for r in rows + [("setup", "tokens/s", "step", "all-reduce")]) for i in range(4)]
    for r in [("setup", "tokens/s", "step", "all-reduce"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\nthroughput ratio (2 procs / 1 proc): {ratio:.2f}  goal >= {GOAL}: "
          f"{'PASS' if ratio >= GOAL else 'BELOW-GOAL'}")


if __name__ == "__main__":
    main()
