"""Training throughput of the lab against a hand-written PyTorch loop, at nanoGPT's CPU shape.

    python benchmarks/train_throughput.py                    # 2-3 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --threads 1        # steadier on a shared machine
    python benchmarks/train_throughput.py --profile          # also: where the lab's extra time goes

Both sides train the gpt-nano preset (4 layers, 4 heads, 128 wide, block 64, batch 12, char
tokens of the bundled corpus) from the same seed on the same batches:

- baseline: ``PlainLoop``, a minimal loop -- the same GPT, the TextDataModule's train_dataloader,
  AdamW from ``lab.modules.build_optimizer`` (same param groups), the same LambdaLR schedule,
  gradient clipping at 1.0 -- each step timed from fetching its batch to the scheduler step;
- lab: ``lab.train.fit`` on the same config, with validation made negligible (one batch, once,
  at the end) and no test; tokens/s is read from ``run.summary["throughput"]`` (the lab's
  ``Throughput`` callback: time between consecutive step ends, data loading included).
  Everything else is the lab as users get it, and its cost counts: TensorBoard logging, the
  learning-rate monitor, the NaN guard, ``last.ckpt`` every 100 steps.

The two sides take turns step by step, in one process (``InTurns``: after each lab step, one
baseline step; its time is then taken off the lab's clock). This shared 2-core machine changes
speed by up to 40% from one run to the next (the baseline alone, run after run: 53 to 77 ms a
step), which is far more than the 5% the goal is about; steps milliseconds apart see the same
machine, so the ratio keeps only what differs: the lab. The first ``--warmup`` steps of each side
are left out. ``--repeats`` such runs are made, and one A/A run (two baselines in turns) shows
how far from 1.00 the method itself can be.

MFU: ``GPT.flops_per_token()`` x tokens/s over the fp32 matmul peak, probed with
``lab.env.matmul_flops`` (best 1024 x 1024 matmul over 0.1 s) between steps every
``--probe-every`` steps, so the probes see the machine the steps saw. The goal's figure is
paired the same way as the ratio: each window of steps against the probe taken right after
it, median over the windows. The table also gives each side's median run against the best
probe of the whole benchmark (which a quiet moment sets, while the run average spans busy
ones too) and against the median probe. ``lab.env.peak_flops("cpu", refresh=True)`` is
called first, which also refreshes the cached peak that ``fit`` divides by in summary.json.

Goals: lab/baseline >= 0.95 and MFU >= 0.40. The script reports PASS / BELOW-GOAL and always
exits 0: a benchmark measures, it does not assert.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: put the repo root before site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lab import env  # noqa: E402
from lab.callbacks import Throughput  # noqa: E402
from lab.config import Config, load_config  # noqa: E402
from lab.env.probe import cpu_line  # noqa: E402
from lab.families import build_datamodule  # noqa: E402
from lab.models.gpt import GPT, GPTConfig  # noqa: E402
from lab.optim import build_optimizer, lr_lambda  # noqa: E402
from lab.train import fit  # noqa: E402

PRESET = "gpt-nano"
RATIO_GOAL = 0.95
MFU_GOAL = 0.40
PROBE_N = 1024
"""Matmul size of the peak probe (as ``lab.env.peak_flops``)."""


def make_config(steps: int) -> Config:
    """The gpt-nano preset, ``steps`` long, with validation reduced to one batch at the very end."""
    return load_config(PRESET, {
        "trainer.max_steps": steps,
        "trainer.val_check_interval": steps,
        "trainer.limit_val_batches": 1,
        "trainer.accelerator": "cpu",
    })


class PlainLoop:
    """The baseline: a minimal PyTorch training loop, advanced one ``step()`` at a time."""

    def __init__(self, cfg: Config, warmup: int) -> None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # as fit() does, before data and model
        dm = build_datamodule(cfg)  # same sample budget -> same windows in the same order as fit()
        dm.prepare_data()
        dm.setup("fit")
        m = cfg.model
        self.model = GPT(GPTConfig(block_size=m.block_size, vocab_size=dm.vocab_size, n_layer=m.n_layer,
                                   n_head=m.n_head, n_embd=m.n_embd, dropout=m.dropout, bias=m.bias))
        self.model.train()
        self.opt = build_optimizer(self.model, cfg.optimizer, torch.device("cpu"))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.optimizer, cfg.trainer.max_steps))
        self.clip = cfg.trainer.gradient_clip_val
        self.batches = iter(dm.train_dataloader())
        self.warmup, self.steps = warmup, 0
        self.tokens = self.seconds = 0.0
        self.loss = torch.tensor(float("nan"))

    def step(self) -> tuple[int, float]:
        """One training step; returns (tokens, seconds), data loading included."""
        t0 = time.perf_counter()
        x, y = next(self.batches)
        loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        seconds = time.perf_counter() - t0
        if self.steps >= self.warmup:
            self.tokens += x.numel()
            self.seconds += seconds
        self.steps += 1
        self.loss = loss.detach()
        return x.numel(), seconds

    def result(self) -> dict[str, float]:
        return {"tokens_per_sec": self.tokens / self.seconds, "loss": self.loss.item(),
                "flops_per_token": self.model.flops_per_token()}


class InTurns(L.Callback):
    """After each lab step, one baseline step (and now and then a peak probe), off the lab's clock.

    It runs right after the lab's ``Throughput`` callback in ``on_train_batch_end`` (callbacks
    passed to ``fit`` follow it; Lightning runs checkpoint callbacks last), and restarts that
    clock when done: the lab is charged for everything but this callback's own work. Each probe
    closes a window: (lab tokens, lab seconds, baseline tokens, baseline seconds, probe FLOP/s)
    over the steps since the previous probe, for MFU against the peak of the same moments.
    """

    def __init__(self, loop: PlainLoop, warmup: int, probe_every: int) -> None:
        self.loop, self.warmup, self.probe_every = loop, warmup, probe_every
        self.windows: list[tuple[float, float, float, float, float]] = []
        self._open = [0.0, 0.0, 0.0, 0.0]
        self._exit: float | None = None
        self._clock: Throughput | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._clock = next(c for c in trainer.callbacks if isinstance(c, Throughput))
        self._clock.warmup = self.warmup  # both sides leave out the same first steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        lab_seconds = time.perf_counter() - self._exit if self._exit is not None else 0.0
        due = batch_idx >= self.warmup and (batch_idx + 1) % self.probe_every == 0
        # A probe's 1024 x 1024 matmuls evict caches: the side that steps right after one
        # alternates from window to window, so neither pays for all of them.
        probe_first = due and len(self.windows) % 2 == 0
        peak = env.matmul_flops(PROBE_N, seconds=0.1) if probe_first else 0.0
        tokens, seconds = self.loop.step()
        if due and not probe_first:
            peak = env.matmul_flops(PROBE_N, seconds=0.1)
        if batch_idx >= self.warmup:
            for i, v in enumerate((batch[0].numel(), lab_seconds, tokens, seconds)):
                self._open[i] += v
            if due:
                self.windows.append((*self._open, peak))
                self._open = [0.0, 0.0, 0.0, 0.0]
        self._exit = self._clock._last = time.perf_counter()  # the benchmark's own work is not the lab's time


def run_in_turns(cfg: Config, root: Path, warmup: int, probe_every: int) -> tuple[dict, dict, list[tuple]]:
    """One lab fit with a baseline stepped in turns; returns (baseline, lab, probe windows)."""
    loop = PlainLoop(cfg, warmup)  # built (and seeded) before fit() seeds and builds the lab's twin
    turns = InTurns(loop, warmup, probe_every)
    run = fit(cfg.to_dict(), runs_root=root, progress=False, test=False, callbacks=[turns])
    lab = dict(run.summary["throughput"])
    lab["loss"] = float(run.summary.get("final", {}).get("train/loss", float("nan")))
    return loop.result(), lab, turns.windows


def a_a(cfg: Config, warmup: int) -> float:
    """Two baselines in turns: the method's own error (1.00 would be perfect)."""
    first, second = PlainLoop(cfg, warmup), PlainLoop(cfg, warmup)
    for _ in range(cfg.trainer.max_steps):
        first.step()
        second.step()
    return second.result()["tokens_per_sec"] / first.result()["tokens_per_sec"]


def profile_lab(cfg: Config, root: Path) -> None:
    """cProfile one more lab run and print what the lab and Lightning do around the model's math.

    The filter keeps the callbacks, the logging path (``self.log`` -> result collection ->
    logger connector -> TensorBoard), checkpointing and data fetching: the work a plain loop
    does not do. The full profile is saved for ``python -m pstats`` or snakeviz.
    """
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fit(cfg.to_dict(), runs_root=root, progress=False, test=False)
    prof.disable()
    path = Path(tempfile.gettempdir()) / "lab_fit.prof"
    prof.dump_stats(path)
    print(f"\ncProfile of one lab fit ({cfg.trainer.max_steps} steps; the whole run, validation and sample "
          f"included) -> {path}")
    stats = pstats.Stats(prof)
    stats.sort_stats("cumulative").print_stats(
        r"lab/callbacks|lab/modules|lr_monitor|model_checkpoint|logger_connector|result\.py|loggers/tensorboard"
        r"|fetchers|clip_grad|checkpoints|core/module\.py.*\(log", 40)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def verdict(value: float, goal: float) -> str:
    return "PASS" if value >= goal else "BELOW-GOAL"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    p.add_argument("--repeats", type=int, default=3, help="lab runs, each with a baseline in turns (default 3)")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of each side's average (default 5)")
    p.add_argument("--probe-every", type=int, default=25, help="steps between matmul peak probes (default 25)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice, one per core); 1 is steadier on a busy "
                        "machine, where threads that wait for each other at every op lose most")
    p.add_argument("--profile", action="store_true", help="also cProfile one extra lab run and print the top")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1: the first step has no previous step end to be timed from")
    if args.steps <= args.warmup:
        p.error(f"--steps must be larger than --warmup ({args.warmup})")
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        p.error("--repeats and --threads must be at least 1")
    if not 1 <= args.probe_every <= args.steps - args.warmup:
        p.error(f"--probe-every must be between 1 and --steps - --warmup ({args.steps - args.warmup}): "
                "MFU needs at least one window of steps with its probe")

    # Keep the output to the table: Lightning's info lines and the single-process warnings.
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cfg = make_config(args.steps)
    threads = torch.get_num_threads()
    print(f"train_throughput: {PRESET}, {args.repeats} runs of {args.steps} steps, lab and baseline in turns step by "
          f"step, warm-up {args.warmup}; torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs",
          flush=True)
    load_before = os.getloadavg()
    probes = [env.peak_flops("cpu", refresh=True)]  # also refreshes the peak fit() divides by
    base_runs: list[dict[str, float]] = []
    lab_runs: list[dict[str, float]] = []
    windows: list[tuple[float, ...]] = []
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        for r in range(args.repeats):
            b, lab, w = run_in_turns(make_config(args.steps), Path(tmp) / "runs", args.warmup, args.probe_every)
            windows += w
            probes += [x[-1] for x in w]
            base_runs.append(b)
            lab_runs.append(lab)
            print(f"  run {r + 1}/{args.repeats}: baseline {fmt_rate(b['tokens_per_sec'])} tok/s, lab "
                  f"{fmt_rate(lab['tokens_per_sec'])} tok/s, lab/baseline {lab['tokens_per_sec'] / b['tokens_per_sec']:.3f}"
                  f" (final train loss {b['loss']:.4f} / {lab['loss']:.4f}; load {os.getloadavg()[0]:.2f})", flush=True)
    aa = a_a(make_config(args.steps), args.warmup)
    print(f"  A/A: baseline / baseline in turns {aa:.3f}", flush=True)

    peak, typical = max(probes), statistics.median(probes)
    fpt = base_runs[0]["flops_per_token"]
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size
    b_all = [x["tokens_per_sec"] for x in base_runs]
    l_all = [x["tokens_per_sec"] for x in lab_runs]
    b_tps, l_tps = statistics.median(b_all), statistics.median(l_all)
    ratios = [lab / base for lab, base in zip(l_all, b_all)]
    ratio = statistics.median(ratios)
    b_mfu, l_mfu = fpt * b_tps / peak, fpt * l_tps / peak
    # Per window: MFU against the probe taken right after its steps, then the median window.
    b_mfu_paired = statistics.median(fpt * bt / bs / pk for _, _, bt, bs, pk in windows)
    l_mfu_paired = statistics.median(fpt * lt / ls / pk for lt, ls, _, _, pk in windows)
    lab_reported_mfu = statistics.median(x.get("mfu", float("nan")) for x in lab_runs)

    rows = [
        ("", "baseline (PyTorch loop)", "lab (lab.train.fit)"),
        ("tokens/s, median of runs", fmt_rate(b_tps), fmt_rate(l_tps)),
        ("tokens/s, every run", " ".join(fmt_rate(x) for x in b_all), " ".join(fmt_rate(x) for x in l_all)),
        ("ms/step, median of runs", f"{1e3 * tokens_per_step / b_tps:.1f}", f"{1e3 * tokens_per_step / l_tps:.1f}"),
        ("achieved GFLOP/s, median of runs", f"{fpt * b_tps / 1e9:.2f}", f"{fpt * l_tps / 1e9:.2f}"),
        (f"MFU, windows vs their probe (goal >= {MFU_GOAL:.2f})", f"{b_mfu_paired:.3f} "
         f"{verdict(b_mfu_paired, MFU_GOAL)}", f"{l_mfu_paired:.3f} {verdict(l_mfu_paired, MFU_GOAL)}"),
        ("MFU, median of runs vs best probe", f"{b_mfu:.3f}", f"{l_mfu:.3f}"),
        ("MFU, median of runs vs median probe", f"{fpt * b_tps / typical:.3f}", f"{fpt * l_tps / typical:.3f}"),
        ("lab / baseline, every run", "", " ".join(f"{x:.3f}" for x in ratios)),
        (f"lab / baseline, median (goal >= {RATIO_GOAL:.2f})", "", f"{ratio:.3f} {verdict(ratio, RATIO_GOAL)}"),
        ("baseline / baseline (A/A: the method's error)", "", f"{aa:.3f}"),
        ("final train loss (same training?)", f"{base_runs[-1]['loss']:.4f}", f"{lab_runs[-1]['loss']:.4f}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print()
    print(f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}; machine: {cpu_line()}, "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}, {threads} threads; "
          f"lightning {L.__version__}")
    print(f"shape: {PRESET} ({cfg.model.n_layer} layers, {cfg.model.n_head} heads, {cfg.model.n_embd} wide, "
          f"block {cfg.model.block_size}, batch {cfg.data.batch_size}); {args.repeats} runs x {args.steps} steps, "
          f"warm-up {args.warmup}; {fpt:,} FLOPs/token; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, median "
          f"{typical / 1e9:.1f} ({len(probes)} probes, {min(probes) / 1e9:.1f}-{peak / 1e9:.1f})")
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs"
          + ("  <- the machine was busy: figures are lower bounds" if max(load_before[0], load_after[0])
             > (os.cpu_count() or 1) + 0.5 else ""))
    print(f"| {rows[0][0]:<{w0}} | {rows[0][1]:>{w1}} | {rows[0][2]:>{w2}} |")
    print(f"| {'-' * w0} | {'-' * (w1 - 1)}: | {'-' * (w2 - 1)}: |")
    for r in rows[1:]:
        print(f"| {r[0]:<{w0}} | {r[1]:>{w1}} | {r[2]:>{w2}} |")
    print(f"(the lab's own summary.json MFU, against the cached peak: {lab_reported_mfu:.3f})")
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
            profile_lab(make_config(args.steps), Path(tmp) / "runs")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
