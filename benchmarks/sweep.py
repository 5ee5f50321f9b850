"""Hyperparameter search: does a 20-trial TPE sweep beat the preset, and does pruning earn its place?

    python benchmarks/sweep.py                         # 20 trials x 300 steps of gpt-nano, 3 sweeps (16 min on 2 quiet cores; far longer on shared ones)
    python benchmarks/sweep.py --pruners median,halving --random
    python benchmarks/sweep.py --tiny                  # the same sweeps of a 1-layer, 32-wide gpt-nano (a busy machine)
    python benchmarks/sweep.py --smoke                 # the tiny model, 4 trials of 20 steps: checks the script only

Everything is measured in one run, on the same machine, with the same seeds (the config's seed
for every trial, the same sampler seed for every sweep), through ``lab.sweep.sweep`` as
``lab sweep`` runs it:

- baseline: the gpt-nano preset trained ``--steps`` steps (its best validation loss);
- unpruned: ``--trials`` TPE trials over the space below, no pruner;
- pruned: the same sweep with each pruner of ``--pruners`` (median, halving), same sampler seed;
- optionally (``--random``) the same budget with the random sampler, unpruned, for comparison.

Every run validates every ``--steps // 6`` steps on the preset's 20 validation batches (what the
pruners decide on; the preset's own 250 would give a 300-step run one validation). Training steps
are the steps each trial's run really trained (``summary.json``'s ``step``; a pruned trial stops at
a validation). Goals (issue 25):

- the unpruned TPE sweep's best validation loss is below the preset's at the same steps;
- each pruned sweep trains >= 40% fewer steps than the unpruned one (ratio <= 0.60), and its best
  validation loss is within 2% of the unpruned sweep's.

The script prints PASS / BELOW-GOAL per goal and always exits 0: a benchmark measures, it does not
assert. Results are also written, phase by phase, to ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: put the repo root before site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lab.config import load_config  # noqa: E402
from lab.env.probe import cpu_line  # noqa: E402
from lab.sweep import sweep  # noqa: E402
from lab.sweep_trial import quiet_lightning  # noqa: E402
from lab.train import fit  # noqa: E402

PRESET = "gpt-nano"
SPACE = {
    "optimizer.lr": {"low": 3e-4, "high": 3e-2, "log": True},
    "optimizer.warmup_steps": {"low": 0, "high": 100, "step": 10},
    "optimizer.schedule": ["cosine", "constant"],
    "optimizer.weight_decay": {"low": 0.0, "high": 0.2},
}
"""What a student would search first: the learning rate and its schedule, and the weight decay."""
TINY = {"model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2, "model.block_size": 32}
"""``--tiny``: gpt-nano shrunk to 1 layer, 32 wide, block 32 (about 20x fewer FLOPs a step); not the goal's model."""
STEP_RATIO_GOAL = 0.60
"""Pruned / unpruned training steps: at least 40% fewer."""
QUALITY_GOAL = 1.02
"""Pruned best / unpruned best validation loss: within 2%."""


def overrides(steps: int, tiny: bool, smoke: bool) -> dict[str, Any]:
    return {"trainer.max_steps": steps, "trainer.val_check_interval": max(1, steps // 6),
            "trainer.checkpoint_every_n_steps": None, **(TINY if tiny or smoke else {}),
            **({"trainer.limit_val_batches": 2} if smoke else {})}


def measure_sweep(label: str, root: Path, trials: int, base: dict[str, Any], sampler: str, pruner: str, seed: int,
                  jobs: int) -> dict[str, Any]:
    began = time.time()
    result = sweep(PRESET, SPACE, trials, overrides=base, runs_root=root, name=label, sampler=sampler, pruner=pruner,
                   seed=seed, jobs=jobs, echo=lambda line: print(f"  [{label}] {line}", flush=True))
    done = [t for t in result.study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    return {"label": label, "sampler": sampler, "pruner": pruner, "trials": len(done),
            "completed": result.counts["complete"], "pruned": result.counts["pruned"], "failed": result.counts["fail"],
            "steps": sum(int(t.user_attrs.get("steps") or 0) for t in done),
            "best": result.best["value"] if result.best else None, "best_params": result.best and result.best["params"],
            "command": result.command, "wall_s": time.time() - began}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "BELOW-GOAL"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--jobs", type=int, default=1, help="worker processes per sweep (1: the figures of record)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--pruners", default="median,halving", help="comma-separated: median, halving")
    p.add_argument("--random", action="store_true", help="also an unpruned random-sampler sweep")
    p.add_argument("--seed", type=int, default=1337, help="the sampler seed of every sweep")
    p.add_argument("--out", default=None, help="runs folder (default: a new temp folder)")
    p.add_argument("--tiny", action="store_true", help="a 1-layer, 32-wide gpt-nano: the same sweeps on a busy machine")
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 trials of 20 steps: checks the script only")
    args = p.parse_args()
    if args.smoke:
        args.trials, args.steps = 4, 20
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="lab-sweep-bench-"))
    base = overrides(args.steps, args.tiny, args.smoke)
    model = f"{PRESET} shrunk to 1 layer x 32 wide" if args.tiny or args.smoke else PRESET
    print(f"# sweep benchmark {dt.datetime.now():%Y-%m-%d %H:%M}  {model}, {args.trials} trials x {args.steps} steps, "
          f"jobs {args.jobs}, torch threads {torch.get_num_threads()}")
    print(f"# cpu: {cpu_line()}  load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# runs: {out}\n# space: {json.dumps(SPACE)}\n# overrides: {json.dumps(base)}", flush=True)
    results: dict[str, Any] = {"args": vars(args), "space": SPACE, "overrides": base, "cpu": cpu_line()}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    began = time.time()
    with quiet_lightning():
        preset = fit(load_config(PRESET, base), runs_root=out, progress=False, test=False)
    results["preset"] = {"best": preset.summary["best"]["val/loss"], "steps": preset.summary["step"],
                         "wall_s": time.time() - began}
    print(f"preset: best val/loss {results['preset']['best']:.4f} in {results['preset']['wall_s']:.0f} s", flush=True)
    save()
    plan = [("tpe-unpruned", "tpe", "none")] + [(f"tpe-{p}", "tpe", p) for p in args.pruners.split(",") if p]
    plan += [("random-unpruned", "random", "none")] if args.random else []
    sweeps = results.setdefault("sweeps", [])
    for label, sampler, pruner in plan:
        sweeps.append(measure_sweep(label, out, args.trials, base, sampler, pruner, args.seed, args.jobs))
        save()

    unpruned = sweeps[0]
    print(f"\n| sweep | finished (completed + pruned) | training steps | steps vs unpruned | best val/loss | "
          f"vs preset ({results['preset']['best']:.4f}) | wall time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for s in sweeps:
        print(f"| {s['label']} | {s['trials']} ({s['completed']} + {s['pruned']}) | {s['steps']:,} | "
              f"{s['steps'] / unpruned['steps']:.2f}x | {s['best']:.4f} | {s['best'] / results['preset']['best']:.3f}x | "
              f"{s['wall_s'] / 60:.1f} min |")
    print("\n| goal | measured | verdict |\n| --- | --- | --- |")
    print(f"| {args.trials} TPE trials beat the preset at {args.steps} steps | {unpruned['best']:.4f} vs "
          f"{results['preset']['best']:.4f} | {verdict(unpruned['best'] < results['preset']['best'])} |")
    for s in sweeps[1:]:
        if s["sampler"] != "tpe":
            continue
        ratio, quality = s["steps"] / unpruned["steps"], s["best"] / unpruned["best"]
        print(f"| {s['pruner']}: >= 40% fewer training steps | {ratio:.2f}x ({s['steps']:,} vs {unpruned['steps']:,}) "
              f"| {verdict(ratio <= STEP_RATIO_GOAL)} |")
        print(f"| {s['pruner']}: best val/loss within 2% | {quality:.4f}x ({s['best']:.4f} vs {unpruned['best']:.4f}) | "
              f"{verdict(quality <= QUALITY_GOAL)} |")
    print(f"\nbest configuration (unpruned): {json.dumps(unpruned['best_params'])}\n  {unpruned['command']}")
    print(f"total {(time.time() - began) / 60:.1f} min; load average after: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    save()


if __name__ == "__main__":
    main()
