"""Fine-tuning from a pretrained run: the figures issue 21 is judged by, measured in one run.

    python benchmarks/finetune.py                               # trains the quickstart run first (~3 min alone)
    python benchmarks/finetune.py --pretrained gpt-nano/<run>   # reuse a quickstart run (lab fit's default)
    python benchmarks/finetune.py --steps 60 --base-steps 100   # a quick look (goals not meaningful)

What it measures, every side trained here from the same seed on the same data:

1. pretrained vs scratch: the ``sentiment`` classifier (gpt-nano's shape, mean pooling, the
   bundled labelled sentences) started from the quickstart language model against the same
   classifier from random weights, after the same number of steps: held-out (test) accuracy.
2. LoRA vs full fine-tuning of that classifier from the quickstart run: the trainable share,
   held-out accuracy (goal: LoRA >= 95% of full's) and the peak memory a few real training
   steps allocate (``lab.plan.measure.measure``, the planner's own measurement).
3. a LoRA fine-tune of the quickstart model on a text it never saw (the lab's own Python
   source, a "new local text"): validation loss on that text, base model against fine-tuned.
4. the Hugging Face round trip of that fine-tune: ``lab export --format hf`` loaded by
   ``transformers``: the largest logit difference against the lab's model.

Goals (issue 21): pretrained accuracy > scratch accuracy; LoRA trainable share <= 2%, LoRA
accuracy >= 0.95 x full's, LoRA peak < full's; fine-tuned val loss < base val loss; logits equal
to 1e-5. The script prints PASS / BELOW-GOAL per goal and always exits 0: it measures.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

# Runnable from a checkout without installing: put the repo root before site-packages.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lab import runs  # noqa: E402
from lab.checkpoints import load_module  # noqa: E402
from lab.config import load_config  # noqa: E402
from lab.env.probe import cpu_line  # noqa: E402
from lab.evaluate import load_data, quality, run_config  # noqa: E402
from lab.plan.measure import measure  # noqa: E402
from lab.train import fit  # noqa: E402


def verdict(ok: bool) -> str:
    return "PASS" if ok else "BELOW-GOAL"


def train(preset: str, root: Path, overrides: dict[str, Any]) -> runs.Run:
    return fit(load_config(preset, overrides), runs_root=root, progress=False)


def best(run: runs.Run) -> str:
    """The best checkpoint, or the last one of a run too short to have validated."""
    return "best" if run.checkpoint("best").is_file() else "last"


def accuracy(run: runs.Run) -> float:
    """Held-out (test split) accuracy of the run's best checkpoint."""
    module = load_module(run, best(run))
    return float(quality(module, load_data(run_config(run), "test", module), "test",
                         "classifier")["accuracy"])


def new_text(folder: Path, vocabulary: set[str]) -> Path:
    """The lab's own Python source as one text, kept to the characters the base model knows."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "lab").rglob("*.py")))
    path = folder / "lab_source.txt"
    path.write_text("".join(c for c in text if c in vocabulary), encoding="utf-8")
    return path


def hf_round_trip(run: runs.Run, out: Path) -> float:
    """Largest |logit difference| between the lab's model and transformers' load of its hf export."""
    from transformers import AutoModelForCausalLM

    from lab.export import export

    export(run, "hf", out=out, ckpt=best(run))
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = load_module(run, best(run)).model.eval()
    x = torch.randint(0, ours.config.vocab_size, (2, ours.config.block_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((theirs(x).logits - ours(x)).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrained", help="a quickstart run (gpt-nano) to start from; default: train one here")
    ap.add_argument("--runs-dir", type=Path, help="where its runs go (default: a temporary folder)")
    ap.add_argument("--base-steps", type=int, default=1500, help="steps of the quickstart run trained here")
    ap.add_argument("--steps", type=int, default=300, help="steps of each classifier and of the text fine-tune")
    ap.add_argument("--rank", type=int, default=4, help="LoRA rank of the classifier's adapters")
    args = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    root = args.runs_dir or Path(tempfile.mkdtemp(prefix="lab-finetune-"))
    if args.pretrained:
        given = Path(args.pretrained)
        base = runs.load_run(given) if given.is_dir() else runs.resolve_run(args.pretrained)
    else:
        print(f"training the quickstart run ({args.base_steps} steps) ...", flush=True)
        base = train("gpt-nano", root, {"trainer.max_steps": args.base_steps})
    steps = {"trainer.max_steps": args.steps}
    src = {"model.init_from": str(base.path)}
    lora = {"finetune.method": "lora", "finetune.rank": args.rank, "finetune.alpha": 2 * args.rank,
            "finetune.targets": "attention", "optimizer.lr": 3e-3}

    print("sentiment classifier: from scratch, from pretrained (full), from pretrained (LoRA) ...", flush=True)
    scratch = train("sentiment", root, steps)
    full = train("sentiment", root, {**steps, **src})
    adapted = train("sentiment", root, {**steps, **src, **lora})
    acc = {name: accuracy(r) for name, r in (("scratch", scratch), ("full", full), ("lora", adapted))}
    share = adapted.summary["model"]["trainable"] / adapted.summary["model"]["params"]
    peak = {name: measure(run_config(r)).peak for name, r in (("full", full), ("lora", adapted))}

    print("LoRA fine-tune of the quickstart model on a new text ...", flush=True)
    base_module = load_module(base, best(base))
    vocabulary = set(base_module.decode(list(range(base_module.model.config.vocab_size))))
    text = new_text(Path(tempfile.mkdtemp(prefix="lab-text-")), vocabulary)
    lm = train("gpt-nano", root, {**steps, **src, "data.path": str(text), "experiment": "gpt-nano-lora",
                                  "finetune.method": "lora", "finetune.rank": 8, "finetune.targets": "both",
                                  "optimizer.lr": 3e-3})
    tuned_module = load_module(lm, best(lm))
    dm = load_data(run_config(lm), "val", tuned_module)
    before = quality(base_module, dm, "val", "lm")["loss"]
    after = quality(tuned_module, dm, "val", "lm")["loss"]
    diff = hf_round_trip(lm, Path(tempfile.mkdtemp(prefix="lab-hf-")) / "hf")

    rows = [
        ("held-out accuracy, from pretrained / from scratch", f"{acc['full']:.3f} / {acc['scratch']:.3f}",
         acc["full"] / acc["scratch"], "> 1", acc["full"] > acc["scratch"]),
        ("LoRA trainable share of parameters", f"{share:.2%}", share, "<= 2%", share <= 0.02),
        ("held-out accuracy, LoRA / full", f"{acc['lora']:.3f} / {acc['full']:.3f}", acc["lora"] / acc["full"],
         ">= 0.95", acc["lora"] >= 0.95 * acc["full"]),
        ("peak training memory, LoRA / full (MiB)", f"{peak['lora'] / 2**20:.1f} / {peak['full'] / 2**20:.1f}",
         peak["lora"] / peak["full"], "< 1", peak["lora"] < peak["full"]),
        ("new text val loss, LoRA fine-tune / base (nats)", f"{after:.3f} / {before:.3f}", after / before, "< 1",
         after < before),
        ("HF export: max |logit difference| vs transformers", f"{diff:.2e}", diff, "<= 1e-5", diff <= 1e-5),
    ]
    print(f"\nCPU: {cpu_line()}, {os.cpu_count()} logical cores, torch {torch.__version__}; "
          f"quickstart run {base.name}; {args.steps} steps per fine-tune; runs in {root}\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'figure'.ljust(width)} | {'measured':>21} | ratio  | goal    | verdict")
    for name, shown, ratio, goal, ok in rows:
        print(f"{name.ljust(width)} | {shown:>21} | {ratio:6.3f} | {goal:7} | {verdict(ok)}")


if __name__ == "__main__":
    main()
