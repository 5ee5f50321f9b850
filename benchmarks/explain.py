"""How long `lab explain` takes on the quickstart run, measured against loading the same run, in one run.

    python benchmarks/explain.py --run gpt-nano/<run_id>     # a run of `lab quickstart` (or `lab fit`)
    python benchmarks/explain.py                             # trains one first (gpt-nano, 1,500 steps: minutes)
    python benchmarks/explain.py --repeats 5 --threads 2

The run is copied into a scratch runs folder (its reports stay untouched). Then, in turns,
``--repeats`` times, each a fresh ``lab`` process as a user starts it, with ``--threads`` torch
threads (default 2: "on 2 cores"):

- **baseline**: ``lab sample RUN --tokens 1`` -- Python, torch and the lab imported, the
  checkpoint and tokenizer loaded, one token generated: the fixed cost of any command on this run;
- **explain**: ``lab explain RUN --input PROMPT`` -- token attributions (Integrated Gradients,
  Occlusion), attention maps, the logit lens, four PNGs, the JSON report, TensorBoard images;
- **explain --check**: the same on test sample 0 plus the three sanity checks on 8 test windows.

Goal: ``lab explain`` (without --check) under 30 s wall time, median of the repeats. The ratio
explain / baseline says what explaining adds to loading, which a busy machine slows alike (the
turns keep both in the same minutes). Prints the CPU, the load average before and after,
PASS / BELOW-GOAL; always exits 0: a benchmark measures, it does not assert.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.env.probe import cpu_line  # noqa: E402
from lab.runs import resolve_run, runs_root  # noqa: E402

GOAL_S = 30.0
"""`lab explain` on the quickstart run, wall time, 2 cores."""
PROMPT = "The pass statement is a null operati"


def lab(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one ``lab`` command in a fresh process (it must succeed)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lab.cli", *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode not in (0, 1):  # explain --check exits 1 when a check fails: measured all the same
        raise SystemExit(f"lab {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="a gpt-nano run (default: train one, 1,500 steps)")
    ap.add_argument("--runs_dir", default=None, help="where --run lives (default: the lab's runs root)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lab-bench-explain-"))
    env = {**os.environ, "LAB_RUNS_DIR": str(scratch), "OMP_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    try:
        if args.run is None:
            print("training gpt-nano (1,500 steps) into a scratch folder...", flush=True)
            subprocess.run([sys.executable, "-m", "lab.cli", "fit", "--config", "gpt-nano"], env=env, check=True,
                           capture_output=True)
            name = next(p for p in (scratch / "gpt-nano").iterdir() if p.is_dir()).name
            name = f"gpt-nano/{name}"
        else:
            src = resolve_run(args.run, args.runs_dir)
            dst = scratch / src.experiment / src.run_id
            shutil.copytree(src.path, dst, ignore=shutil.ignore_patterns("reports", "compressed", "export",
                                                                             "last.ckpt", "events.out.tfevents.*"))
            name = f"{src.experiment}/{src.run_id}"
            print(f"run {name} from {runs_root(args.runs_dir)}, copied to {scratch}")
        load_before = os.getloadavg()
        commands = {"baseline (lab sample --tokens 1)": ["sample", name, "--tokens", "1"],
                    "lab explain --input PROMPT": ["explain", name, "--input", PROMPT],
                    "lab explain --check": ["explain", name, "--check"]}
        times: dict[str, list[float]] = {k: [] for k in commands}
        for i in range(args.repeats):
            for label, argv in commands.items():
                times[label].append(lab(argv, env))
            print(f"repeat {i + 1}: " + ", ".join(f"{k.split(' (')[0]} {v[-1]:.1f} s" for k, v in times.items()),
                  flush=True)
        load_after = os.getloadavg()
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["baseline (lab sample --tokens 1)"]
        print(f"\nCPU: {cpu_line()}, {os.cpu_count()} logical cores, {args.threads} torch threads")
        print(f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after")
        print(f"{'command':36} {'median s':>9} {'every run (s)':>24} {'x baseline':>10}")
        for label, values in times.items():
            print(f"{label:36} {med[label]:9.1f} {' '.join(f'{v:.1f}' for v in values):>24} {med[label] / base:10.2f}")
        explain_s = med["lab explain --input PROMPT"]
        verdict = "PASS" if explain_s < GOAL_S else "BELOW-GOAL"
        print(f"\ngoal: lab explain on the quickstart run under {GOAL_S:.0f} s: {explain_s:.1f} s {verdict} "
              f"(explaining adds {explain_s - base:.1f} s to loading the run; with --check "
              f"{med['lab explain --check']:.1f} s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
