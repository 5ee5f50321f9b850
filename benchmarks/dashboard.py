"""Dashboard data loading, measured in one run: the Runs page's table (cold and cached) and scalar reading vs tbparse.

    python benchmarks/dashboard.py                 # 200 runs x 1000 logged steps, about 1-2 minutes
    python benchmarks/dashboard.py --runs 50 --repeats 3

A real run is trained once (seed-mlp, ``--steps`` steps, every step logged: train/loss,
train/mse, train/mae, train/r2, the learning rate, perf/*, and val/* every 50 steps), then its
folder is copied ``--runs`` times under fresh run ids: real event files, configs and summaries.

Measured, each in this one process:

- Runs page, cold: ``dashboard/common.runs_table`` (what ``dashboard/app.py`` calls: the mtime
  signature + ``lab.dashboard_data.runs_table`` under ``st.cache_data``) with the cache empty;
  baseline: ``lab.runs.list_runs`` (what ``lab runs`` reads). Goal <= 2 s.
- Runs page, warm: the same call again (signature computed, table from the cache). Goal <= 0.2 s.
- Scalars of one run: ``lab.tfevents.read_scalars`` vs ``tbparse.SummaryReader(run).scalars``
  (and TensorBoard's ``EventAccumulator``, what ``lab.runs.scalars`` uses), median over runs;
  goal: ours at least as fast as tbparse (ratio tbparse/ours >= 1).
- Compare page curves for 5 runs (read + smooth + long frame), cold.

Timings are medians of ``--repeats`` (cold ones clear the cache first). Prints PASS/BELOW-GOAL;
always exits 0: a benchmark measures, it does not assert.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "dashboard"))
warnings.filterwarnings("ignore")
logging.getLogger("streamlit").setLevel(logging.ERROR)
logging.getLogger("lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def make_runs(root: Path, n: int, steps: int) -> Path:
    from lab.config import load_config
    from lab.runs import load_run, update_summary
    from lab.train import fit

    src = fit(load_config("seed-mlp", {"trainer.max_steps": steps, "trainer.log_every_n_steps": 1,
                                       "trainer.val_check_interval": 50}), runs_root=root / "_src", progress=False)
    for i in range(n):
        exp = f"sweep-{i % 4}"
        dst = root / exp / f"20261129-{i:06d}-{i:04x}"
        shutil.copytree(src.path, dst, ignore=shutil.ignore_patterns("checkpoints"))
        run = load_run(dst)
        update_summary(run, experiment=exp, run_id=dst.name)
    shutil.rmtree(root / "_src")
    return root


def timed(fn: Callable[[], Any], repeats: int, before: Callable[[], None] | None = None) -> float:
    out = []
    for _ in range(repeats):
        if before:
            before()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scalar-runs", type=int, default=10, help="runs whose scalars are read by each reader")
    args = ap.parse_args()

    import streamlit as st
    from tbparse import SummaryReader

    import common  # dashboard/common.py: the cached loaders the pages call

    for name in list(logging.root.manager.loggerDict):  # "No runtime found" warnings: expected outside `streamlit run`
        if name.startswith("streamlit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from lab import dashboard_data as dd
    from lab import runs as runs_mod
    from lab.tfevents import read_scalars

    tmp = Path(tempfile.mkdtemp(prefix="lab-bench-dashboard-"))
    try:
        t0 = time.perf_counter()
        root = make_runs(tmp, args.runs, args.steps)
        setup_s = time.perf_counter() - t0
        n_points = sum(len(v) for v in read_scalars(next(iter(runs_mod.list_runs(root))).path).values())
        roots = str(root)

        cold = timed(lambda: common.runs_table(roots), args.repeats, before=st.cache_data.clear)
        base_list = timed(lambda: runs_mod.list_runs(roots), args.repeats)
        common.runs_table(roots)
        warm = timed(lambda: common.runs_table(roots), args.repeats * 4)
        sig = timed(lambda: dd.runs_signature(roots), args.repeats * 4)

        paths = [r.path for r in runs_mod.list_runs(root)][: args.scalar_runs]
        ours = statistics.median(timed(lambda p=p: read_scalars(p), args.repeats) for p in paths)
        tbp = statistics.median(timed(lambda p=p: SummaryReader(str(p)).scalars, 1) for p in paths)
        acc = statistics.median(timed(lambda p=p: runs_mod.scalars(p), 1) for p in paths)
        # Same data? (tbparse's long frame vs ours)
        df = SummaryReader(str(paths[0])).scalars
        same = len(df) == sum(len(v) for v in read_scalars(paths[0]).values())

        five = [runs_mod.load_run(p) for p in paths[:5]]
        curves = timed(lambda: dd.curves(five, ["train/loss", "val/loss"], x="tokens", smoothing=0.6),
                       args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"# dashboard data: {args.runs} runs x {args.steps} logged steps ({n_points} scalar points per run), "
          f"setup {setup_s:.0f} s")
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    rows = [
        ("Runs page data, cold (cache empty)", cold, "lab.runs.list_runs", base_list, cold / base_list, "<= 2 s",
         cold <= 2.0),
        ("Runs page data, warm (cached)", warm, "cold load above", cold, warm / cold, "<= 0.2 s", warm <= 0.2),
        ("  of which the mtime signature", sig, "cold load above", cold, sig / cold, "-", None),
        ("scalars of one run: lab.tfevents", ours, "tbparse SummaryReader", tbp, tbp / ours, "tbparse/ours >= 1",
         tbp / ours >= 1),
        ("scalars of one run: lab.tfevents", ours, "EventAccumulator", acc, acc / ours, "-", None),
        ("Compare curves, 5 runs, cold", curves, "-", float("nan"), float("nan"), "-", None),
    ]
    print("\n| measure | ours (s) | baseline | baseline (s) | ratio | goal | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t, bname, bt, ratio, goal, ok in rows:
        verdict = "-" if ok is None else "PASS" if ok else "BELOW-GOAL"
        bcell, rcell = ("-", "-") if bt != bt else (f"{bt:.4f}", f"{ratio:.2f}x")  # nan: no baseline
        print(f"| {name} | {t:.4f} | {bname} | {bcell} | {rcell} | {goal} | {verdict} |")
    print(f"\nratio column: warm/cold and signature/cold are fractions of the cold load; scalar rows are "
          f"baseline/ours (speed-up). tbparse and lab.tfevents read the same points: {same}")


if __name__ == "__main__":
    main()
