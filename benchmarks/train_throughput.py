"""Training throughput of the lab against a hand-written PyTorch loop, at nanoGPT's CPU shape.

    python benchmarks/train_throughput.py                    # about 3 minutes on 2 quiet CPU cores
    python benchmarks/train_throughput.py --steps 400 --repeats 9 --threads 1
    python benchmarks/train_throughput.py --profile          # also: where the lab's extra time goes

Both sides train the gpt-nano preset (4 layers, 4 heads, 128 wide, block 64, batch 12, char
tokens of the bundled corpus) from the same seed on the same batches:

- baseline: a minimal loop -- the same GPT, the TextDataModule's train_dataloader, AdamW from
  ``lab.modules.build_optimizer`` (same param groups), the same LambdaLR schedule, gradient
  clipping at 1.0 -- timed like the lab's ``Throughput`` callback: between consecutive step
  ends (so data loading counts), leaving out the first ``--warmup`` steps;
- lab: ``lab.train.fit`` on the same config, with validation made negligible (one batch, once,
  at the end) and no test; tokens/s is read from ``run.summary["throughput"]``. Everything else
  is the lab as users get it, and its cost counts: TensorBoard logging, the learning-rate
  monitor, the NaN guard, ``last.ckpt`` every 100 steps.

The two alternate ``--repeats`` times (A B, B A, A B, ...) and the medians are compared, so a
noisy shared machine hurts both sides alike; the table also gives the median of the per-pair
ratios (each pair ran back to back, so it cancels slow drifts in load) and best / best (the
least disturbed run of each). Achieved FLOP/s is ``GPT.flops_per_token()`` x tokens/s; MFU
divides it by the fp32 matmul peak measured in this same run: ``lab.env.peak_flops("cpu",
refresh=True)`` before every pair (it also refreshes the lab's cached peak, which ``fit`` reads),
the best probe counting as the machine's peak.

On 2 cores, any other busy process makes torch's two threads wait for each other at every op:
the script prints the load average, and ``--threads 1`` gives steadier (if lower) figures.

Goals: lab/baseline >= 0.95 and MFU >= 0.40. The script reports PASS / BELOW-GOAL and always
exits 0: a benchmark measures, it does not assert.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Runnable from a checkout without installing: put the repo root before site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lab import env  # noqa: E402
from lab.config import Config, load_config  # noqa: E402
from lab.models.gpt import GPT, GPTConfig  # noqa: E402
from lab.modules import build_optimizer, lr_lambda  # noqa: E402
from lab.train import build_datamodule, fit  # noqa: E402

PRESET = "gpt-nano"
RATIO_GOAL = 0.95
MFU_GOAL = 0.40


def make_config(steps: int) -> Config:
    """The gpt-nano preset, ``steps`` long, with validation reduced to one batch at the very end."""
    return load_config(PRESET, {
        "trainer.max_steps": steps,
        "trainer.val_check_interval": steps,
        "trainer.limit_val_batches": 1,
        "trainer.accelerator": "cpu",
    })


def baseline(cfg: Config, warmup: int) -> dict[str, float]:
    """A minimal PyTorch training loop; returns tokens/s over the steps after ``warmup``."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as fit() does, before data and model
    dm = build_datamodule(cfg)  # same sample budget -> same windows in the same order as fit()
    dm.prepare_data()
    dm.setup("fit")
    m = cfg.model
    model = GPT(GPTConfig(block_size=m.block_size, vocab_size=dm.vocab_size, n_layer=m.n_layer, n_head=m.n_head,
                          n_embd=m.n_embd, dropout=m.dropout, bias=m.bias))
    model.train()
    opt = build_optimizer(model, cfg.optimizer, torch.device("cpu"))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optimizer, cfg.trainer.max_steps))
    clip = cfg.trainer.gradient_clip_val
    tokens = seconds = 0.0
    last = time.perf_counter()
    for step, (x, y) in enumerate(dm.train_dataloader()):
        if step >= cfg.trainer.max_steps:
            break
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        now = time.perf_counter()
        if step >= warmup:
            tokens += x.numel()
            seconds += now - last
        last = now
    return {"tokens_per_sec": tokens / seconds, "loss": loss.item(), "flops_per_token": model.flops_per_token()}


def lab_fit(cfg: Config, root: Path) -> dict[str, float]:
    """``lab.train.fit`` on ``cfg``; returns the Throughput callback's run average."""
    run = fit(cfg.to_dict(), runs_root=root, progress=False, test=False)
    out = dict(run.summary["throughput"])
    out["loss"] = float(run.summary.get("final", {}).get("train/loss", float("nan")))
    return out


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
    p.add_argument("--steps", type=int, default=250, help="training steps per run (default 250)")
    p.add_argument("--repeats", type=int, default=7, help="baseline/lab pairs, alternated (default 7)")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of each run's average (the lab's: 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice, one per core); 1 is steadier on a busy "
                        "machine, where threads that wait for each other at every op lose most")
    p.add_argument("--profile", action="store_true", help="also cProfile one extra lab run and print the top")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        p.error(f"--steps must be larger than --warmup ({args.warmup})")

    # Keep the output to the table: Lightning's info lines and the single-process warnings.
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cfg = make_config(args.steps)
    threads = torch.get_num_threads()
    print(f"train_throughput: {PRESET}, {args.steps} steps x {args.repeats} repeats, warm-up {args.warmup}; "
          f"torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs", flush=True)
    load_before = os.getloadavg()
    peaks: list[float] = []
    base_runs: list[dict[str, float]] = []
    lab_runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        root = Path(tmp) / "runs"
        for r in range(args.repeats):
            # Measured before every pair (fit() then reads this fresh value from the cache); the best
            # of them is the machine's peak, since a busy moment can only make a probe slower.
            peaks.append(env.peak_flops("cpu", refresh=True))
            # A B, then B A, ...: a load that drifts during a pair hits both sides alike over two pairs.
            if r % 2 == 0:
                b = baseline(make_config(args.steps), args.warmup)
                lab = lab_fit(make_config(args.steps), root)
            else:
                lab = lab_fit(make_config(args.steps), root)
                b = baseline(make_config(args.steps), args.warmup)
            base_runs.append(b)
            lab_runs.append(lab)
            print(f"  repeat {r + 1}/{args.repeats} ({'baseline, lab' if r % 2 == 0 else 'lab, baseline'}): "
                  f"peak {peaks[-1] / 1e9:.1f} GFLOP/s, baseline {fmt_rate(b['tokens_per_sec'])} tok/s, "
                  f"lab {fmt_rate(lab['tokens_per_sec'])} tok/s, lab/baseline "
                  f"{lab['tokens_per_sec'] / b['tokens_per_sec']:.3f} (final train loss {b['loss']:.4f} / "
                  f"{lab['loss']:.4f}; load {os.getloadavg()[0]:.2f})", flush=True)

    peak = max(peaks)
    fpt = base_runs[0]["flops_per_token"]
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size
    b_all = [x["tokens_per_sec"] for x in base_runs]
    l_all = [x["tokens_per_sec"] for x in lab_runs]
    b_tps, l_tps = statistics.median(b_all), statistics.median(l_all)
    ratio = l_tps / b_tps
    pair_ratio = statistics.median(l / b for l, b in zip(l_all, b_all))
    b_mfu, l_mfu = fpt * b_tps / peak, fpt * l_tps / peak
    lab_reported_mfu = statistics.median(x.get("mfu", float("nan")) for x in lab_runs)

    rows = [
        ("", "baseline (PyTorch loop)", "lab (lab.train.fit)"),
        ("tokens/s, median", fmt_rate(b_tps), fmt_rate(l_tps)),
        ("tokens/s, best", fmt_rate(max(b_all)), fmt_rate(max(l_all))),
        ("tokens/s, every run", " ".join(fmt_rate(x) for x in b_all), " ".join(fmt_rate(x) for x in l_all)),
        ("ms/step, median", f"{1e3 * tokens_per_step / b_tps:.1f}", f"{1e3 * tokens_per_step / l_tps:.1f}"),
        ("achieved GFLOP/s, median", f"{fpt * b_tps / 1e9:.2f}", f"{fpt * l_tps / 1e9:.2f}"),
        (f"MFU, median (goal >= {MFU_GOAL:.2f})", f"{b_mfu:.3f} {verdict(b_mfu, MFU_GOAL)}",
         f"{l_mfu:.3f} {verdict(l_mfu, MFU_GOAL)}"),
        ("MFU, best run", f"{fpt * max(b_all) / peak:.3f}", f"{fpt * max(l_all) / peak:.3f}"),
        (f"lab / baseline, medians (goal >= {RATIO_GOAL:.2f})", "", f"{ratio:.3f} {verdict(ratio, RATIO_GOAL)}"),
        ("lab / baseline, median of pairs", "", f"{pair_ratio:.3f} {verdict(pair_ratio, RATIO_GOAL)}"),
        ("lab / baseline, best / best", "", f"{max(l_all) / max(b_all):.3f}"),
        ("final train loss (same training?)", f"{base_runs[-1]['loss']:.4f}", f"{lab_runs[-1]['loss']:.4f}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print()
    print(f"date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}; machine: {platform.machine()} "
          f"{platform.processor() or ''} {os.cpu_count()} CPUs; torch {torch.__version__}, {threads} threads; "
          f"lightning {L.__version__}")
    print(f"shape: {PRESET} ({cfg.model.n_layer} layers, {cfg.model.n_head} heads, {cfg.model.n_embd} wide, "
          f"block {cfg.model.block_size}, batch {cfg.data.batch_size}); {args.steps} steps, warm-up "
          f"{args.warmup}, {args.repeats} alternated repeats; {fpt:,} FLOPs/token; "
          f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (best of {len(peaks)} probes this run: "
          f"{', '.join(f'{x / 1e9:.1f}' for x in peaks)})")
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} CPUs"
          + ("  <- the machine was busy: figures are lower bounds" if max(load_before[0], load_after[0])
             > (os.cpu_count() or 1) + 0.5 else ""))
    print(f"| {rows[0][0]:<{w0}} | {rows[0][1]:>{w1}} | {rows[0][2]:>{w2}} |")
    print(f"| {'-' * w0} | {'-' * (w1 - 1)}: | {'-' * (w2 - 1)}: |")
    for r in rows[1:]:
        print(f"| {r[0]:<{w0}} | {r[1]:>{w1}} | {r[2]:>{w2}} |")
    print(f"(the lab's own summary.json MFU, against the peak probed just before each run: {lab_reported_mfu:.3f})")
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
            profile_lab(make_config(args.steps), Path(tmp) / "runs")
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
