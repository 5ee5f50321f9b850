"""The ``lab`` command: a thin layer that parses, calls one ``lab`` function and prints.

    lab quickstart                         # train gpt-nano on the bundled corpus (~2 min on 2 CPU cores)
    lab fit --config configs/gpt-nano.yaml --trainer.max_steps 200 --data.path book.txt
    lab fit --config digits-cnn --print_config
    lab runs                               # a table of runs
    lab sample gpt-nano/20261128-120000-ab12 --tokens 300
    lab evaluate last                      # quality + latency/size report in reports/eval-best.json
    lab compress last --method int8-dynamic   # or int8-static, onnx, onnx-int8, prune, distill, all
    lab export last --format safetensors   # or onnx, torchscript, hf (a Hugging Face GPT-2 folder)
    lab explain last --input 3 [--check]   # heatmaps, attention, logit lens in reports/explain/
    lab data speech [--generate [--bundle]]   # the bundled spoken digits; synthesize them anew with espeak-ng
    lab doctor [--json] [--bench]          # check this machine; exit 1 if a check fails
    lab plan --config gpt2-124m --precision bf16-mixed --devices 8   # memory, FLOPs, time, a recommendation
    lab launch --nodes 2 --gpus-per-node 8 [--slurm] -- lab fit --config gpt2-124m   # torchrun lines / sbatch
    lab sweep --config gpt-nano --space space.yaml --trials 20 [--jobs 2]   # Optuna search; each trial a run
    lab serve last [--artifact int8-dynamic] [--port 8000] [--api-key KEY]   # OpenAI-compatible HTTP on 127.0.0.1

User errors (bad config, missing files) print one line and exit with code 2;
Ctrl-C exits with 130 after marking the run ``interrupted``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from lab.errors import LabError
from lab.ports import LOOPBACK

DEFAULT_CONFIG = "gpt-nano"
PRESETS = Path(__file__).parent / "configs"
"""The bundled presets (``lab.config.PRESETS_DIR``; not imported here, to keep `lab --help` fast)."""
"""What ``lab fit`` trains without --config."""

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
    from lab.config import load_config
    from lab.config_docs import commented_yaml
    from lab.train import fit

    if args.resume:
        if args.config is not None and args.resume != "last":
            # --config only picks the experiment for `--resume last`; a named run keeps its own config.
            raise LabError(f"--config cannot be combined with --resume {args.resume}: a resumed run trains with its "
                           "own config.yaml; drop --config (dotted overrides such as --trainer.max_steps are allowed)")
        run = _resume_target(args, overrides)
        cfg = load_config(run.path / "config.yaml", overrides)
        if args.print_config:
            print(commented_yaml(cfg), end="")
            return 0
        print(f"resuming {run.name}", flush=True)
        run = fit(cfg, runs_root=args.runs_dir, resume=run)
    else:
        cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
        if args.print_config:
            print(commented_yaml(cfg), end="")
            return 0
        run = fit(cfg, runs_root=args.runs_dir)
    from lab.strategies import launch_context

    if launch_context().is_zero:  # under ddp/torchrun every rank gets here; one table is enough
        print(summary_table(run))
    return 0


def _run_or_checkpoint(args: argparse.Namespace) -> Any:
    """The run a command names: ``<experiment>/<run_id>``, an id, a path, ``last`` -- or a .ckpt file on its own."""
    from lab.runs import resolve_run

    if str(args.run).endswith(".ckpt") and Path(args.run).is_file():
        from lab.checkpoints import standalone_run

        return standalone_run(args.run)
    return resolve_run(args.run, args.runs_dir)


def _resume_target(args: argparse.Namespace, overrides: list[str]) -> Any:
    """``--resume RUN`` or ``--resume last`` (the newest run of the --config's experiment)."""
    from lab.config import load_config
    from lab.runs import list_runs, resolve_run, runs_root

    if args.resume != "last":
        return resolve_run(args.resume, args.runs_dir)
    experiment = load_config(args.config or DEFAULT_CONFIG, overrides).experiment
    found = [r for r in list_runs(args.runs_dir) if r.experiment == experiment]
    if not found:
        raise LabError(f"no {experiment} runs under {runs_root(args.runs_dir)} to resume")
    return found[-1]


def summary_table(run: Any) -> str:
    s = run.summary
    rows = [{"metric": k, "value": v} for k, v in {
        "run": run.name, "status": run.status, "steps": s.get("step"), "params": s.get("model", {}).get("params"),
        "wall time (s)": s.get("wall_time_s"), **{f"best {k}": v for k, v in s.get("best", {}).items()},
        **s.get("test", {}), **{k: v for k, v in s.get("baseline", {}).items()},
        **{f"throughput {k}": v for k, v in s.get("throughput", {}).items() if k != "peak_flops"},
    }.items()]
    return table(rows, ["metric", "value"])


def cmd_quickstart(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.config import load_config
    from lab.checkpoints import load_module
    from lab.train import fit

    if args.tokens < 1:  # refused now, not after minutes of training
        raise LabError(f"--tokens {args.tokens}: give a whole number >= 1 (characters to generate at the end)")
    cfg = load_config("gpt-nano", overrides)
    print(f"Training gpt-nano ({cfg.model.n_layer} layers, {cfg.model.n_embd} wide) on the bundled corpus "
          f"for {cfg.trainer.max_steps} steps on the CPU...", flush=True)
    run = fit(cfg, runs_root=args.runs_dir)
    module = load_module(run, "best")
    print("\nA sample from the best checkpoint:\n" + "-" * 60)
    print(module.sample(args.tokens).strip())
    print("-" * 60 + "\n" + summary_table(run))
    # The next commands must find this run: name the runs folder when the user chose one.
    where = f" --runs_dir {shlex.quote(str(args.runs_dir))}" if args.runs_dir else ""
    print(f"\nRun folder: {run.path}\nNext:\n  tensorboard --logdir {run.path.parent.parent} --host 127.0.0.1\n"
          f"  lab dashboard{where}\n  jupyter lab notebooks/\n  lab sample {run.name}{where}")
    return 0


def cmd_runs(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.runs import lineage, list_runs, runs_root, status_note

    found = list_runs(args.runs_dir)
    if not found:
        print(f"no runs under {runs_root(args.runs_dir)} yet: try `lab quickstart`")
        return 0
    rows = [{"run": r.name, "status": r.status, "model": (r.summary.get("model") or {}).get("name"),
             "params": (r.summary.get("model") or {}).get("params"), "steps": r.summary.get("step"),
             "best val/loss": (r.summary.get("best") or {}).get("val/loss"),
             "wall (s)": r.summary.get("wall_time_s")} for r in found]
    if any(map(lineage, found)):  # a column only when some run started from pretrained weights
        rows = [{**row, "from": lineage(r) or "-"} for row, r in zip(rows, found)]
    print(table(rows, list(rows[0])))
    for note in filter(None, map(status_note, found)):
        print(note)
    return 0


def cmd_sample(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.evaluate import load_checked
    from lab.families import family_of

    run = _run_or_checkpoint(args)
    if family_of(run.config).task != "lm":
        raise LabError(f"{run.name} is not a language model run: pick a language model's run (e.g. gpt-nano) to "
                       "sample from")
    _check_sampling(args)
    module = load_checked(run, args.ckpt)  # a checkpoint that does not fit the run is one line, not a traceback
    print(module.sample(args.tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed))
    return 0


def _check_sampling(args: argparse.Namespace) -> None:
    """Sampling options, refused before a checkpoint is loaded (nan passes every comparison)."""
    if args.tokens < 1:
        raise LabError(f"--tokens {args.tokens}: give a whole number >= 1 (tokens to generate)")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise LabError(f"--temperature {args.temperature}: give a finite number > 0 (e.g. 0.8; lower is more "
                       "conservative)")
    if args.top_k is not None and args.top_k < 1:
        raise LabError(f"--top_k {args.top_k}: give a whole number >= 1 (the likeliest tokens to sample among)")
    if not 0 <= args.seed < 2**32:
        raise LabError(f"--seed {args.seed}: give a whole number in [0, {2**32 - 1}]")


def _measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run as <experiment>/<run_id>, a run id, a path, 'last', or a .ckpt file on its own")
    p.add_argument("--ckpt", default="best", help="best, last, or a checkpoint path")
    p.add_argument("--split", default="test", help="test or val: the held-out split to measure quality on")
    p.add_argument("--max_batches", type=int, default=None, help="evaluate on the first N batches only (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch/ONNX Runtime threads for timing (default: torch's)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per batch size, after warm-up")


def cmd_evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.evaluate import evaluate, scalar_figures

    run = _run_or_checkpoint(args)
    report = evaluate(run, args.ckpt, args.split, max_batches=args.max_batches, threads=args.threads,
                      repeats=args.repeats)
    rows = [{"figure": k, "value": v} for k, v in scalar_figures(report).items()]
    print(table(rows, ["figure", "value"]))
    print(f"\nreport: {run.eval_report(report['label'])}")
    return 0


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    options: dict[str, Any] = {}
    for name in ("sparsity", "steps"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    for item in args.opt or []:
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise LabError(f"--opt {item!r}: give KEY=VALUE, e.g. --opt temperature=2.0")
        options[key] = yaml.safe_load(value)
    return options


def cmd_compress(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.compress import compress

    run = _run_or_checkpoint(args)
    result = compress(run, args.method, ckpt=args.ckpt, split=args.split, max_batches=args.max_batches,
                      threads=args.threads, repeats=args.repeats, **_method_options(args))
    if args.method == "all":
        cols = [c for c in result["rows"][0] if c not in ("size_bytes", "backend")]
        print(table(result["rows"], cols))
        for name, err in result["errors"].items():
            print(f"{name}: skipped ({err})")
        print(f"\ncomparison: {run.compressed_root / 'comparison.json'}  plot: {run.compressed_root / 'pareto.png'}")
        return 0
    d = result["deltas"]
    rows = [{"figure": k, "value": v} for k, v in {"backend": result["backend"], **d}.items()]
    print(table(rows, ["figure", "value"]))
    print(f"\nartifact: {run.compressed_dir(args.method)}")
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.export import export

    run = _run_or_checkpoint(args)
    folder = export(run, args.format, out=args.out, ckpt=args.ckpt)
    print(f"exported {run.name} as {args.format} to {folder} (see its README.md)")
    return 0


def cmd_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.sweep import sweep

    try:
        result = sweep(args.config, args.space, args.trials, overrides=overrides, runs_root=args.runs_dir,
                       jobs=args.jobs, name=args.name, sampler=args.sampler, pruner=args.pruner,
                       storage=args.storage, seed=args.sampler_seed)
    except KeyboardInterrupt as e:
        print("\ninterrupted: the sweep keeps its finished trials, and the interrupted trial is marked failed and "
              "queued again; run the same command to continue", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    print(result.text())
    return 0


def cmd_explain(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.explain import explain

    run = _run_or_checkpoint(args)
    given = args.input
    index = int(given) if given is not None and given.strip().lstrip("-").isdigit() else None
    result = explain(run, index=index, text=given if given is not None and index is None else None,
                     methods=args.method, check=args.check, compressed=args.compressed, ckpt=args.ckpt)
    print(result.summary())
    return 1 if result.checks is not None and not result.checks["passed"] else 0  # like lab doctor: a check failed


def cmd_data(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.data import espeak

    if args.generate:
        voices = espeak.VOICES if args.voices is None else [v for v in args.voices.split(",") if v.strip()]
        made = espeak.generate(args.out, voices=voices, takes=args.takes, seed=args.seed,
                               bundle=espeak.BUNDLE if args.bundle else None)
        print(f"{made['clips']} clips ({made['words']} words x {made['voices']} voices x {args.takes} takes, "
              f"{made['seconds']:.0f} s of audio, {made['espeak-ng']}) in {made['folder']}")
        if made["bundle"]:
            print(f"bundled copy rewritten: {made['bundle']}")
        print(f"train on it: lab fit --config speech-cnn --data.path {made['folder']}")
        return 0
    info = espeak.bundle_info()
    print(f"bundled spoken digits ({espeak.BUNDLE}, {info['bytes'] / 2**20:.1f} MiB): {info['clips']} clips, "
          f"{info['seconds']:.0f} s at {info['rate']} Hz, made with {info.get('espeak-ng', 'espeak-ng')}\n"
          f"  words:   {', '.join(info['words'])}\n  voices:  {', '.join(info['voices'])}\n"
          f"  accents: {', '.join(info['accents'])}\n"
          f"espeak-ng here: {'installed' if espeak.available() else 'not installed (not needed for the bundled copy)'}")
    return 0


def cmd_doctor(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.env import report

    r = report(args.runs_dir, bench=args.bench)
    print(r.to_json() if args.json else r.to_text())
    return r.exit_code


def cmd_dashboard(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab.dashboard_server import serve

    return serve(args.runs_dir, host=args.host, port=args.port)


def cmd_serve(args: argparse.Namespace, overrides: list[str]) -> int:
    import dataclasses

    from lab.serve import ServeConfig, serve

    given = vars(args)  # the serve options are named as ServeConfig's fields; the rest keep its defaults
    cfg = ServeConfig(**{f.name: given[f.name] for f in dataclasses.fields(ServeConfig) if f.name in given})
    return serve(cfg)  # checks the options, the run, the artifact first: one line and exit 2 before anything loads


def cmd_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from lab.plan import plan

    p = plan(args.config, overrides, precision=args.precision, optimizer=args.optimizer, strategy=args.strategy,
             devices=args.devices, nodes=args.nodes, micro_batch=args.micro_batch, seq_len=args.seq_len,
             accumulate=args.accumulate, activation_checkpointing=args.activation_checkpointing, tokens=args.tokens,
             device=args.device, mfu=args.mfu, host_memory=args.host_memory)
    print(json.dumps(p.to_dict(), indent=2, default=str) if args.json else p.to_text())
    return 0


def cmd_launch(args: argparse.Namespace, overrides: list[str]) -> int:
    from lab import launch

    if not 1 <= args.master_port <= 65535:
        raise LabError(f"--master-port {args.master_port}: give a TCP port in [1, 65535] that is free on node 0")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise LabError(f"--cpus-per-task {args.cpus_per_task}: give a whole number >= 1, or leave it out")
    if args.out:
        above = _first_existing(Path(args.out))
        if above == Path(args.out) and above.is_dir():
            raise LabError(f"--out {args.out} is a folder: give a file name, e.g. {Path(args.out) / 'launch.sh'}")
        if not above.is_dir() and above != Path(args.out):
            raise LabError(f"--out {args.out}: {above} is a file, not a folder; choose another path")
    if args.slurm:
        text = launch.sbatch_script(args.command, args.nodes, args.gpus_per_node, time=args.time,
                                    job_name=args.job_name, partition=args.partition, cpus_per_task=args.cpus_per_task)
    else:
        text = launch.torchrun_text(args.command, args.nodes, args.gpus_per_node, master_addr=args.master_addr,
                                    master_port=args.master_port)
    print(text, end="")
    if args.out:
        print(f"# written to {launch.write(text, args.out)}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the lab's one-line refusals: ``error: ...`` and exit code 2, no usage block."""

    def error(self, message: str) -> Any:  # subcommands' parsers are made from this class too
        self.exit(2, f"error: {message}: see `{self.prog} --help`\n")


def _fields_epilog(argv: Sequence[str]) -> str:
    """``lab fit --help``'s list of every field of the config named on the line (default: gpt-nano),
    with its value and its docstring: the dataclasses are the one source of this text."""
    from lab.config import load_config
    from lab.config_docs import fields_help

    argv = list(argv)
    name = DEFAULT_CONFIG
    for i, tok in enumerate(argv):
        if tok == "--config" and i + 1 < len(argv):
            name = argv[i + 1]
        elif tok.startswith("--config="):
            name = tok.split("=", 1)[1]
    try:
        cfg = load_config(name)
    except LabError as e:
        return f"{OVERRIDES_HELP}\n\n(no field list: {e})"
    return f"{OVERRIDES_HELP}\n\nFields of {name} (current value): what each means and allows:\n{fields_help(cfg)}"


def build_parser(fit_epilog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog="lab", description="Large Model Lab: train, evaluate and compress models.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, fn: Any, overrides: bool = False, runs_dir: bool = True) -> argparse.ArgumentParser:
        epilog = (fit_epilog if name == "fit" and fit_epilog else OVERRIDES_HELP) if overrides else None
        p = sub.add_parser(name, help=help, description=help, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if runs_dir:  # only where the command reads or writes runs
            p.add_argument("--runs_dir", default=None, help="runs root (default: $LAB_RUNS_DIR, else runs/ of the lab repository you are in, else ./runs)")
        p.set_defaults(fn=fn, takes_overrides=overrides)
        return p

    p = add("fit", "Train a model from a preset or YAML config.", cmd_fit, overrides=True)
    presets = ", ".join(sorted(f.stem for f in PRESETS.glob("*.yaml")))  # what lab.config.list_presets lists
    p.add_argument("--config", default=None, help=f"preset name ({presets}) or YAML path (default: gpt-nano); "
                   "`lab fit --config X --help` lists X's fields")
    p.add_argument("--print_config", action="store_true", help="print the fully resolved config and exit")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue RUN (or 'last': the newest run of --config's experiment) from its newest intact checkpoint")
    p = add("quickstart", "Train gpt-nano on the bundled corpus, sample from it and show what to do next.",
            cmd_quickstart, overrides=True)
    p.add_argument("--tokens", type=int, default=300, help="characters of text to generate at the end")
    add("runs", "List the runs with their status and metrics.", cmd_runs)
    p = add("sample", "Generate text from a language-model run.", cmd_sample)
    p.add_argument("run", help="run as <experiment>/<run_id>, a run id, a path, 'last', or a .ckpt file on its own")
    p.add_argument("--ckpt", default="best", help="best, last, or a checkpoint path")
    p.add_argument("--tokens", type=int, default=300, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="> 0; lower is more conservative")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest tokens")
    p.add_argument("--seed", type=int, default=0, help="seed for reproducible samples")
    p = add("evaluate", "Measure a run's quality and cost; writes reports/eval-<ckpt>.json.", cmd_evaluate)
    _measure_args(p)
    p = add("compress", "Compress a run (int8-dynamic, int8-static, onnx, onnx-int8, prune, prune-structured, distill, all).",
            cmd_compress)
    _measure_args(p)
    p.add_argument("--method", required=True, help="a compression method, or all (adds comparison.json, pareto.png)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="prune: fraction of weights to remove; prune-structured: of heads, neurons, channels, items")
    p.add_argument("--steps", type=int, default=None,
                   help="prune: fine-tune steps (default 100); distill: training steps (default: as many as the teacher had)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="any other method option (repeatable)")
    p = add("export", "Write a deployable artifact: onnx, torchscript, safetensors or hf (+ config, tokenizer, README).",
            cmd_export)
    p.add_argument("run", help="run as <experiment>/<run_id>, a run id, a path, 'last', or a .ckpt file on its own")
    p.add_argument("--format", required=True, help="onnx, torchscript, safetensors or hf (GPT-2 layout for transformers)")
    p.add_argument("--ckpt", default="best", help="best, last, or a checkpoint path")
    p.add_argument("--out", default=None, help="folder to write (default: runs/<exp>/<run>/export/<format>/)")
    p = add("sweep", "Search hyperparameters with Optuna: each trial is a normal run; stop and rerun to continue.",
            cmd_sweep, overrides=True)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="preset name or YAML path: the config the trials start from")
    p.add_argument("--space", required=True, help="YAML: dotted fields to ranges or choices, e.g. "
                   "optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}")
    p.add_argument("--trials", type=int, default=20, help="finished trials (completed + pruned) the study should hold")
    p.add_argument("--jobs", type=int, default=1, help="worker processes training trials at once on this machine")
    p.add_argument("--name", default=None, help="the study's name: runs/<experiment>/sweeps/<name>/ "
                   "(default: the space file's name)")
    p.add_argument("--sampler", default="tpe", help="tpe (default) or random")
    p.add_argument("--pruner", default="halving", help="halving (successive halving, default), median or none")
    p.add_argument("--storage", default=None, help="a database URL several machines share, e.g. "
                   "postgresql://user:pass@host/lab (default: SQLite in the sweep folder)")
    p.add_argument("--sampler_seed", type=int, default=None, help="the sampler's seed (default: the config's seed)")
    p = add("explain", "Explain a prediction: attribution heatmaps, attention maps, the logit lens; PNGs in "
            "reports/explain/; --check runs the sanity checks (exit 1 if one fails).", cmd_explain)
    p.add_argument("run", help="run as <experiment>/<run_id>, a run id, a path, 'last', or a .ckpt file on its own")
    p.add_argument("--input", default=None, help="a test-sample index (default 0), or for text models a prompt / a "
                   "text to classify (a text of digits only reads as an index)")
    p.add_argument("--method", action="append", default=None,
                   help="integrated_gradients, saliency, occlusion, attention or logit_lens (repeatable; default: "
                   "all the model's family supports)")
    p.add_argument("--check", action="store_true",
                   help="completeness, model randomisation and deletion-curve checks on the first test samples")
    p.add_argument("--compressed", default=None, metavar="METHOD",
                   help="explain this compressed artifact beside the original (int8-dynamic, prune, prune-structured, "
                   "distill)")
    p.add_argument("--ckpt", default="best", help="best, last, or a checkpoint path")
    p = add("data", "Show or make a data set: `lab data speech` (the bundled spoken digits), with --generate "
            "synthesized anew with espeak-ng.", cmd_data, runs_dir=False)
    p.add_argument("dataset", choices=["speech"], help="speech: spoken digits made with espeak-ng")
    p.add_argument("--generate", action="store_true", help="synthesize the clips with espeak-ng into a WAV folder")
    p.add_argument("--out", default=None,
                   help="folder for the WAVs (new or empty; default: the cache's speech/espeak-ng)")
    p.add_argument("--voices", default=None, help="espeak-ng voice variants, comma-separated (default: the lab's 35)")
    p.add_argument("--takes", type=int, default=3, help="versions of each word per voice (accent, speed, pitch drawn)")
    p.add_argument("--seed", type=int, default=0, help="seed of the accents, speeds and pitches drawn")
    p.add_argument("--bundle", action="store_true", help="also rewrite the bundled copy (lab/data/bundled/speech.npz)")
    p = add("doctor", "Check this machine: versions, torch build, CPU, RAM, disk, GPUs, Jupyter; exit 1 if a check fails.",
            cmd_doctor)
    p.add_argument("--json", action="store_true", help="print the report as JSON (a stable document, schema lab.env/1)")
    p.add_argument("--bench", action="store_true",
                   help="also measure matmul, memory bandwidth and all-reduce (seconds); caches the CPU peak for MFU")
    p = add("dashboard", "Start the dashboard (Streamlit) on 127.0.0.1, over the runs of --runs_dir.", cmd_dashboard)
    p.add_argument("--host", default=LOOPBACK, help=f"address to listen on (default {LOOPBACK}: this machine only)")
    p.add_argument("--port", type=int, default=8501, help="TCP port (default 8501)")
    p = add("serve", "Serve a run over HTTP: OpenAI-compatible /v1/completions for language models, /predict for "
            "the others, /health and Prometheus /metrics.", cmd_serve)
    p.add_argument("run", help="run as <experiment>/<run_id>, a run id, a path or 'last'")
    from lab.serve.config import ServeConfig

    d = ServeConfig(run="")  # the one home of serve's defaults
    p.add_argument("--artifact", default=d.artifact, help="fp32 (the checkpoint) or a compressed artifact: "
                   "int8-dynamic, prune, prune-structured, distill, onnx, onnx-int8")
    p.add_argument("--ckpt", default=d.ckpt, help="best, last, or a checkpoint path")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port})")
    p.add_argument("--workers", type=int, default=d.workers,
                   help=f"server processes, each with its own model (default {d.workers})")
    p.add_argument("--api-key", "--api_key", dest="api_key", default=d.api_key,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    p.add_argument("--model-name", "--model_name", dest="model_name", default=d.model_name,
                   help="the model's name in the API (default: the run's name)")
    p.add_argument("--max-batch-size", "--max_batch_size", dest="max_batch_size", type=int, default=d.max_batch_size,
                   help=f"requests batched together (default {d.max_batch_size})")
    p.add_argument("--max-wait-ms", "--max_wait_ms", dest="max_wait_ms", type=float, default=d.max_wait_ms,
                   help=f"how long a batch waits for more requests (default {d.max_wait_ms:g} ms)")
    p.add_argument("--join-every", "--join_every", dest="join_every", type=int, default=d.join_every,
                   help=f"decoding steps between newcomers joining a running generation batch (default {d.join_every})")
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=d.max_tokens,
                   help=f"most tokens one completion may ask for (default {d.max_tokens})")
    p.add_argument("--max-streams", "--max_streams", dest="max_streams", type=int, default=d.max_streams,
                   help=f"completions in flight at once; more get 429 (default {d.max_streams})")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads for the model (default: torch's)")
    p.add_argument("--access-log", "--access_log", dest="access_log", action="store_true",
                   help="print one line per request (default: off; errors are printed either way)")
    p = add("plan", "Estimate memory per device, FLOPs and time for training a config, and recommend a setup.",
            cmd_plan, overrides=True, runs_dir=False)
    p.add_argument("--config", default="gpt-nano", help="preset name or YAML path (any model the lab knows)")
    p.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, bf16-true, 16-true (default: config's)")
    p.add_argument("--optimizer", default=None, help="adamw or sgd (default: config's)")
    p.add_argument("--strategy", default=None, help="single, ddp, fsdp, fsdp_grad_op, deepspeed_stage_2[_offload], "
                   "deepspeed_stage_3[_offload] (default: config's; auto = single or ddp)")
    p.add_argument("--devices", type=int, default=None, help="devices per node (default: config's)")
    p.add_argument("--nodes", type=int, default=None, help="machines (default: config's)")
    p.add_argument("--micro_batch", type=int, default=None, help="samples per device per step (default: data.batch_size)")
    p.add_argument("--seq_len", type=int, default=None, help="tokens per sample, GPT only (default: model.block_size)")
    p.add_argument("--accumulate", type=int, default=None, help="micro-batches per optimizer step (default: config's)")
    p.add_argument("--activation_checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--tokens", default=None, help="token (or sample) budget, e.g. 10B, 300M, 2.5e9: adds time to budget")
    p.add_argument("--device", default=None, help="A100, A100-40GB, H100, H200, L4, A10G, V100 or cpu (default: this machine's)")
    p.add_argument("--mfu", type=float, default=0.4, help="model-FLOPs utilisation assumed for times (default 0.4)")
    p.add_argument("--host_memory", default=None, help="RAM per node for CPU offload, e.g. 2T (default: this machine's)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p = add("launch", "Print (or write) the torchrun commands per node, or an sbatch script, for `lab fit` on many "
            "GPUs/nodes.", cmd_launch, runs_dir=False)
    p.add_argument("--nodes", type=int, required=True, help="machines")
    p.add_argument("--gpus-per-node", "--gpus_per_node", dest="gpus_per_node", type=int, required=True,
                   help="processes (GPUs) per machine")
    p.add_argument("--slurm", action="store_true", help="write an sbatch script instead of torchrun commands")
    p.add_argument("--master-addr", "--master_addr", dest="master_addr", default="MASTER_ADDR",
                   help="torchrun: node 0's address (default: a placeholder to replace)")
    p.add_argument("--master-port", "--master_port", dest="master_port", type=int, default=29500,
                   help="torchrun: a free TCP port on node 0")
    p.add_argument("--time", default="24:00:00", help="slurm: time limit (the job requeues itself before it)")
    p.add_argument("--job-name", "--job_name", dest="job_name", default="lab", help="slurm: job name")
    p.add_argument("--partition", default=None, help="slurm: partition")
    p.add_argument("--cpus-per-task", "--cpus_per_task", dest="cpus_per_task", type=int, default=None,
                   help="slurm: CPU cores per GPU process (data loading)")
    p.add_argument("--out", default=None, help="also write the launcher to this file")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- lab fit --config ... (the training command)")
    return parser


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (what a mkdir -p would have to start from)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_runs_dir(args: argparse.Namespace) -> None:
    """A runs root inside a file can hold no runs: refused before a command reads or writes it.

    ``lab doctor`` is left to report it among its checks (exit code 1).
    """
    if not hasattr(args, "runs_dir") or args.fn is cmd_doctor:
        return
    from lab.runs import runs_root

    root = runs_root(args.runs_dir)
    probe = _first_existing(root)
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == root else f"is inside {probe}, which is a file"
        raise LabError(f"runs folder {root} {where}: pass --runs_dir (or set LAB_RUNS_DIR) to a folder")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_fit_help = argv[:1] == ["fit"] and ("-h" in argv or "--help" in argv)
    parser = build_parser(_fields_epilog(argv) if wants_fit_help else None)
    args, rest = parser.parse_known_args(argv)
    if rest and not args.takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        _check_runs_dir(args)
        return args.fn(args, rest)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)
        where = f" ({e.run_dir})" if getattr(e, "run_dir", None) else ""
        print(f"\ninterrupted: the run{where} is marked 'interrupted' and last.ckpt saved; "
              "continue it with `lab fit --resume RUN`", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
