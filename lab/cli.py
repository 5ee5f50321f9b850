"""The ``lab`` command: a thin layer that parses, calls one ``lab`` function and prints.

    lab quickstart                         # train gpt-nano on the bundled corpus (~2 min on 2 CPU cores)
    lab fit --config configs/gpt-nano.yaml --trainer.max_steps 200 --data.path book.txt
    lab fit --config digits-cnn --print_config
    lab runs                               # a table of runs
    lab sample gpt-nano/20261128-120000-ab12 --tokens 300

User errors (bad config, missing files) print one line and exit with code 2;
Ctrl-C exits with 130 after marking the run ``interrupted``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from lab.errors import LabError

OVERRIDES_HELP = (
    "Any config field can be overridden with a dotted flag, e.g. --trainer.max_steps 200 "
    "--model.n_layer 6 --optimizer.lr 3e-4 --data.path book.txt. "
    "Sections: model, data, trainer, optimizer (plus --experiment, --seed). "
    "--print_config shows every field with its resolved value."
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (what `lab runs` and the quickstart summary print)."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def cmd_fit(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.config import load_config, to_yaml

    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from lab.train import fit

    run = fit(cfg, runs_root=args.runs_dir)
    print(summary_table(run))
    return 0


def summary_table(run: Any) -> str:
    s = run.summary
    rows = [{"metric": k, "value": v} for k, v in {
        "run": run.name, "status": s.get("status"), "steps": s.get("step"), "params": s.get("model", {}).get("params"),
        "wall time (s)": s.get("wall_time_s"), **{f"best {k}": v for k, v in s.get("best", {}).items()},
        **s.get("test", {}), **{k: v for k, v in s.get("baseline", {}).items()},
        **{f"throughput {k}": v for k, v in s.get("throughput", {}).items() if k != "peak_flops"},
    }.items()]
    return table(rows, ["metric", "value"])


def cmd_quickstart(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.config import load_config
    from lab.train import fit, load_module

    cfg = load_config("gpt-nano", overrides)
    print(f"Training gpt-nano ({cfg.model.n_layer} layers, {cfg.model.n_embd} wide) on the bundled corpus "
          f"for {cfg.trainer.max_steps} steps on the CPU...", flush=True)
    run = fit(cfg, runs_root=args.runs_dir)
    module = load_module(run, "best")
    print("\nA sample from the best checkpoint:\n" + "-" * 60)
    print(module.sample(args.tokens).strip())
    print("-" * 60 + "\n" + summary_table(run))
    print(f"\nRun folder: {run.path}\nNext:\n  tensorboard --logdir {run.path.parent.parent} --host 127.0.0.1\n"
          f"  streamlit run dashboard/app.py\n  jupyter lab notebooks/\n  lab sample {run.name}")
    return 0


def cmd_runs(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.runs import list_runs, runs_root

    found = list_runs(args.runs_dir)
    if not found:
        print(f"no runs under {runs_root(args.runs_dir)} yet: try `lab quickstart`")
        return 0
    rows = [{"run": r.name, "status": r.status, "model": r.summary.get("model", {}).get("name"),
             "params": r.summary.get("model", {}).get("params"), "steps": r.summary.get("step"),
             "best val/loss": r.summary.get("best", {}).get("val/loss"),
             "wall (s)": r.summary.get("wall_time_s")} for r in found]
    print(table(rows, list(rows[0])))
    return 0


def cmd_sample(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.runs import resolve_run
    from lab.train import load_module

    run = resolve_run(args.run, args.runs_dir)
    if run.config.get("model", {}).get("name") != "gpt":
        raise LabError(f"{run.name} is not a language model run: sampling needs a gpt run")
    if args.tokens < 1 or args.temperature <= 0:
        raise LabError("--tokens must be >= 1 and --temperature > 0")
    module = load_module(run, args.ckpt)
    print(module.sample(args.tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lab", description="Large Model Lab: train, evaluate and compress models.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, fn: Any, overrides: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=OVERRIDES_HELP if overrides else None)
        p.add_argument("--runs_dir", default=None, help="runs root (default: $LAB_RUNS_DIR or ./runs)")
        p.set_defaults(fn=fn, takes_overrides=overrides)
        return p

    p = add("fit", "Train a model from a preset or YAML config.", cmd_fit, overrides=True)
    p.add_argument("--config", default="gpt-nano", help="preset name (gpt-nano, gpt2-124m, digits-cnn, seed-mlp) or YAML path")
    p.add_argument("--print_config", action="store_true", help="print the fully resolved config and exit")
    p = add("quickstart", "Train gpt-nano on the bundled corpus, sample from it and show what to do next.",
            cmd_quickstart, overrides=True)
    p.add_argument("--tokens", type=int, default=300, help="characters of text to generate at the end")
    add("runs", "List the runs with their status and metrics.", cmd_runs)
    p = add("sample", "Generate text from a language-model run.", cmd_sample)
    p.add_argument("run", help="run as <experiment>/<run_id>, a run id, a path, or 'last'")
    p.add_argument("--ckpt", default="best", help="best, last, or a checkpoint path")
    p.add_argument("--tokens", type=int, default=300, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="> 0; lower is more conservative")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens")
    p.add_argument("--seed", type=int, default=0, help="seed for reproducible samples")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not args.takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.fn(args, rest)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the run is marked 'interrupted' and its last checkpoint kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
