"""Deployable artifacts: a run's model as ONNX, TorchScript, safetensors or a Hugging Face folder.

    from lab.export import export, load_safetensors
    folder = export(run, "safetensors")        # runs/<exp>/<run>/export/safetensors/
    model = load_safetensors(folder)           # a lab.models nn.Module, rebuilt with no pickle
    export(run, "onnx"); export(run, "torchscript")
    export(run, "hf")                          # GPT-2 layout: transformers' from_pretrained loads it

Every folder holds ``config.yaml`` (the run's resolved config, ``model.vocab_size`` filled
in), ``tokenizer.json`` for text models, the weights, and a ``README.md`` with a small
``predict``/``generate`` example. The export is checked before it is kept: the artifact
must reproduce the PyTorch model's outputs on real inputs (ONNX within
``lab.compress.onnx.FP32_TOLERANCE``; TorchScript, safetensors and hf exactly: an hf folder
is read back with ``lab.hub``, the reader ``--model.init_from FOLDER`` uses). It is built
in a temp folder beside the target and renamed into place when complete.

safetensors refuses tensors that share memory; the GPT's tied embedding/LM-head matrix
is stored once by ``safetensors.torch.save_model`` and re-tied by ``load_model``.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lab import hub, runs
from lab.compress.parity import max_abs_diff, parity_inputs
from lab.config import from_dict
from lab.families import ModelFamily, family_of
from lab.errors import LabError
from lab.fileio import atomic_write_text, check_writable, read_only_run_advice, storage_errors

FORMATS = ("onnx", "torchscript", "safetensors", "hf")
WEIGHTS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors",
           "hf": "model.safetensors"}


def export(run: runs.Run | str | Path, fmt: str, out: str | Path | None = None, ckpt: str = "best",
           runs_root: Any = None) -> Path:
    """Write ``run``'s model as ``fmt`` into ``export/<fmt>/`` (or ``out``) and return the folder."""
    from lab.compress import _replace_dir
    from lab.evaluate import load_checked, load_data, run_config

    if fmt not in FORMATS:
        raise LabError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run = run if isinstance(run, runs.Run) else runs.resolve_run(run, runs_root)
    target = Path(out) if out is not None else run.export_dir(fmt)
    _check_target(target)  # before loading anything: a bad --out is refused at once
    read_only = "choose a writable --out folder" if out is not None else read_only_run_advice(run.name)
    check_writable(target.parent, if_read_only=read_only)  # a read-only folder too
    cfg = run_config(run)
    fam = family_of(cfg)
    if fmt not in fam.export_formats:
        raise LabError(f"{fam.name} models export as {', '.join(fam.export_formats)}, not {fmt}")
    module = load_checked(run, ckpt)
    model = module.model.eval()
    dm = load_data(cfg, "val", module)
    batches = [x for _, (x, _) in zip(range(2), dm.val_dataloader())]
    # The exporters write with their own code (torch.onnx, torch.jit, safetensors): a full disk
    # or unwritable folder there still ends in one StorageError line.
    with storage_errors(target.parent, target=target, if_read_only=read_only):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            config = cfg.to_dict()
            if getattr(model.config, "vocab_size", None) is not None:
                config["model"]["vocab_size"] = int(model.config.vocab_size)
            atomic_write_text(tmp / "config.yaml", yaml.safe_dump(config, sort_keys=False))
            if run.tokenizer_path.exists():
                shutil.copyfile(run.tokenizer_path, tmp / "tokenizer.json")
            check = _WRITERS[fmt](model, batches, tmp / WEIGHTS[fmt])
            atomic_write_text(tmp / "README.md", readme(fmt, run, family_of(cfg), list(batches[0].shape), check))
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _check_target(target: Path) -> None:
    """An existing target is replaced only if it is empty or an earlier export (never a user's folder)."""
    if not target.exists():
        above = target.parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise LabError(f"cannot write {target}: {above} is a file, not a folder; choose another --out")
        return
    ours = {"README.md", "config.yaml", "config.json", "tokenizer.json", *WEIGHTS.values()}
    if not target.is_dir() or any(p.name not in ours for p in target.iterdir()):
        raise LabError(f"{target} exists and is not an earlier `lab export` folder: choose a new or empty folder")


def _write_onnx(model: nn.Module, batches: list[torch.Tensor], path: Path) -> dict[str, Any]:
    from lab.compress.onnx import FP32_TOLERANCE, export_onnx, predictor, session

    export_onnx(model, batches[0], path)
    diff = max_abs_diff(model, predictor(session(path)), parity_inputs(batches[0], batches[1:]))
    if not diff <= FP32_TOLERANCE:
        raise LabError(f"the ONNX export does not match PyTorch: max abs difference {diff:.3g} > {FP32_TOLERANCE}")
    return {"max_abs_diff": diff, "tolerance": FP32_TOLERANCE}


def _write_torchscript(model: nn.Module, batches: list[torch.Tensor], path: Path) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export; still the portable format
        traced = torch.jit.trace(model, batches[0])
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
    diff = max_abs_diff(model, loaded, parity_inputs(batches[0], batches[1:]))
    if diff > 1e-5:
        raise LabError(f"the TorchScript export does not match PyTorch: max abs difference {diff:.3g}")
    return {"max_abs_diff": diff, "tolerance": 1e-5}


def _write_safetensors(model: nn.Module, batches: list[torch.Tensor], path: Path) -> dict[str, Any]:
    from safetensors.torch import save_model

    save_model(model, str(path), metadata={"format": "pt", "lab_model": type(model).__name__})
    loaded = load_safetensors(path.parent)
    diff = max_abs_diff(model, loaded, batches)
    if diff != 0.0:
        raise LabError(f"the safetensors round trip changed the outputs (max abs difference {diff:.3g})")
    return {"max_abs_diff": diff, "tolerance": 0.0}


def _write_hf(model: nn.Module, batches: list[torch.Tensor], path: Path) -> dict[str, Any]:
    """GPT-2's layout (``lab.hub.save_hf``); tokenizer.json becomes an HF one (a char vocabulary as WordLevel)."""
    from lab.data.tokenizers import CharTokenizer, load_tokenizer
    from lab.models.gpt import GPT

    tokenizer = load_tokenizer(path.parent / "tokenizer.json") if (path.parent / "tokenizer.json").exists() else None
    hub.save_hf(model, tokenizer, path.parent)
    pre = hub.read_hf_folder(path.parent)
    loaded = GPT(dataclasses.replace(pre.config, dropout=model.config.dropout)).eval()
    hub.load_gpt(loaded, pre)
    diff = max_abs_diff(model, loaded, batches)
    if diff != 0.0:
        raise LabError(f"the hf export read back gives other outputs (max abs difference {diff:.3g})")
    char = isinstance(tokenizer, CharTokenizer)
    return {"max_abs_diff": diff, "tolerance": 0.0, "note": (
        "\nThis run's tokenizer is character-level, not GPT-2's byte-level BPE: `tokenizer.json` holds the same "
        "characters as an HF WordLevel tokenizer (one piece per character). Load it with "
        "`tokenizers.Tokenizer.from_file(\"tokenizer.json\")` or `lab.data.tokenizers.load_tokenizer`, not with "
        "`GPT2Tokenizer`.\n") if char else ""}


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "safetensors": _write_safetensors, "hf": _write_hf}


def load_safetensors(folder: str | Path) -> nn.Module:
    """Rebuild a ``lab.models`` model from an exported folder: config.yaml + model.safetensors.

    Nothing is unpickled: the config is read with ``yaml.safe_load`` and the tensors with
    safetensors; tied weights are re-tied by ``safetensors.torch.load_model``.
    """
    from safetensors.torch import load_model

    folder = Path(folder)
    cfg_path, weights = folder / "config.yaml", folder / WEIGHTS["safetensors"]
    for p in (cfg_path, weights):
        if not p.is_file():
            raise LabError(f"{folder} is not a safetensors export: {p.name} is missing")
    cfg = from_dict(yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {})
    if getattr(cfg.model, "vocab_size", 0) is None:
        raise LabError(f"{cfg_path} has no model.vocab_size: re-export with `lab export RUN --format safetensors`")
    model = family_of(cfg).build(cfg.model)
    try:
        load_model(model, str(weights), strict=True)
    except Exception as e:
        raise LabError(f"{weights} does not match {cfg_path.name}: {str(e).splitlines()[0][:200]}") from None
    return model.eval()


def readme(fmt: str, run: runs.Run, fam: ModelFamily, shape: list[int], check: dict[str, Any]) -> str:
    """The exported folder's README: what is in it and a small predict/generate example."""
    lm = fam.task == "lm"
    what = fam.describe or f"A {fam.name} model"
    head = (f"# {run.name} — {fmt} export\n\n{what}. Exported from `{run.name}` with `lab export`; "
            f"checked against PyTorch on real inputs (max abs difference {check['max_abs_diff']:.3g}, "
            f"tolerance {check['tolerance']:g}). Example input shape: {shape}.\n\n"
            f"Files: `{WEIGHTS[fmt]}`, " + ("`config.json` (GPT-2's config), " if fmt == "hf" else "")
            + "`config.yaml` (the resolved config)"
            + (", `tokenizer.json` (what the ids mean)" if fam.tokenized else "") + ".\n\n")
    tok = ("from lab.data.tokenizers import load_tokenizer\n"
           "tok = load_tokenizer(\"tokenizer.json\")\n") if fam.tokenized else ""
    if fmt == "safetensors":
        load = ("from lab.export import load_safetensors\n"
                "model = load_safetensors(\".\")          # config.yaml + model.safetensors, no pickle\n")
        call = "model"
    elif fmt == "torchscript":
        load = ("import torch\nmodel = torch.jit.load(\"model.torchscript.pt\")   # needs only torch\n")
        call = "model"
    elif fmt == "hf":
        load = ("from transformers import AutoModelForCausalLM\n"
                "hf = AutoModelForCausalLM.from_pretrained(\".\")   # config.json + model.safetensors (GPT-2)\n"
                "def model(x):\n    return hf(x).logits\n")
        call = "model"
    else:
        load = ("import onnxruntime as ort\n"
                "so = ort.SessionOptions()\n"
                "so.add_session_config_entry(\"session.set_denormal_as_zero\", \"1\")  # fast softmax under causal masks\n"
                "sess = ort.InferenceSession(\"model.onnx\", so, providers=[\"CPUExecutionProvider\"])\n"
                "def model(x):                         # dynamic batch (and sequence) axes\n"
                "    return torch.from_numpy(sess.run(None, {\"input\": x.numpy()})[0])\n")
        call = "model"
    if lm:
        body = (f"```python\nimport torch\n{load}{tok}\n"
                "@torch.no_grad()\n"
                "def generate(prompt: str, new_tokens: int = 100, block_size: int = "
                f"{shape[-1]}) -> str:\n"
                "    ids = torch.tensor([tok.encode(prompt)], dtype=torch.long)\n"
                "    for _ in range(new_tokens):\n"
                f"        logits = {call}(ids[:, -block_size:])[:, -1, :]\n"
                "        nxt = torch.multinomial(torch.softmax(logits / 0.8, dim=-1), 1)\n"
                "        ids = torch.cat([ids, nxt], dim=1)\n"
                "    return tok.decode(ids[0].tolist())\n\n"
                "print(generate(\"def \"))\n```\n")
    else:
        example = ("torch.tensor([tok.encode(\"A text to classify.\")])" if fam.tokenized  # ids of one text
                   else "torch.tensor([0, 1, 2])" if fam.task == "ranking"  # user ids
                   else "torch.randn(4, " + ", ".join(str(s) for s in shape[1:]) + ")")
        post = {"classifier": ".argmax(-1)   # predicted classes",
                "ranking": ".topk(10).indices   # each user's 10 best-scored items"}.get(fam.task, "   # predictions")
        body = (f"```python\nimport torch\n{load}{tok}\n"
                f"def predict(x: torch.Tensor) -> torch.Tensor:\n"
                f"    with torch.no_grad():\n        return {call}(x){post}\n\n"
                f"print(predict({example}))   "
                + ("# class ids; model.labels in config.yaml names them" if fam.tokenized
                   else "# inputs normalised as in training (see config.yaml)") + "\n```\n")
    extra = {"torchscript": "\n`torch.jit` is deprecated upstream in favour of `torch.export`; TorchScript files "
                            "still load with plain `torch.jit.load`.\n",
             "onnx": "\nExported with `torch.onnx.export(dynamo=False)`, opset 17.\n",
             "safetensors": "\nThe GPT's tied embedding / LM-head matrix is stored once and re-tied on load.\n",
             "hf": "\nA Hugging Face GPT-2 folder (`config.json`, `model.safetensors` with GPT-2's names and Conv1D "
                   "layout; zero biases where the lab model has none). Train on from it with "
                   "`lab fit --model.init_from <this folder>`.\n"}[fmt]
    return head + body + extra + check.get("note", "")
