"""Pretrained GPT weights in and out: Hugging Face GPT-2 folders, Hub ids, and the lab's own runs.

    from lab import hub
    pre = hub.load_pretrained("gpt2")                   # a Hub id: downloaded once into the HF cache
    pre = hub.load_pretrained("path/to/folder")         # config.json + model.safetensors (or pytorch_model.bin)
    pre = hub.load_pretrained("gpt-nano/<run_id>")      # a lab run's best checkpoint (or a run folder, a .ckpt)
    pre.config, pre.tokenizer, pre.origin               # the source's GPTConfig, its tokenizer, the lineage record
    model = GPT(dataclasses.replace(pre.config, block_size=256))
    hub.load_gpt(model, pre)                            # every tensor's shape checked, then copied
    hub.save_hf(model, tokenizer, Path("out"))          # a folder transformers' from_pretrained loads

``lab fit --config gpt2-124m --model.init_from gpt2`` comes through here: ``resolve`` checks the
source against the config before any data is read (on a meta-device model: no memory), then
``lab.families.build_module`` calls ``initialize`` to copy the weights, and summary.json keeps
``lineage(source)``. ``lab export RUN --format hf`` writes with ``save_hf``.

GPT-2 keeps ``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` as ``Conv1D``
(weight ``[in, out]``, the transpose of ``nn.Linear``'s), always has biases, ties its LM head to
``wte`` and uses the tanh GELU (``gelu_new``): an import gives ``bias=True`` and
``activation="gelu_tanh"``; an export of a bias-free lab GPT writes zero biases. Nothing is
unpickled: safetensors, or ``torch.load(weights_only=True)`` for ``pytorch_model.bin``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lab import runs
from lab.data.tokenizers import (GPT2_END_OF_TEXT, CharTokenizer, Tokenizer, load_hf_tokenizer, load_tokenizer,
                                 parse_tokenizer)
from lab.errors import LabError
from lab.fileio import atomic_write, atomic_write_text
from lab.models.gpt import GPT, GPTConfig

if TYPE_CHECKING:  # only for hints: lab.config imports the family registry, which imports this module
    from lab.config import Config

HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]
"""What a Hub snapshot downloads (a repo also holds TF, Flax, ONNX... weights the lab never reads)."""
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
"""An HF folder's weights, in the order they are looked for (the pickle one is read weights-only)."""
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
_MASKS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")  # causal-mask buffers older transformers saved
_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


@dataclass
class Pretrained:
    """A pretrained GPT as the lab reads it."""

    config: GPTConfig
    """The source's shape (bias, activation, vocab_size; block_size = its position table's length)."""
    state_dict: dict[str, torch.Tensor]
    """Its tensors under the lab GPT's parameter names (``lm_head.weight`` is ``transformer.wte.weight``)."""
    tokenizer: Tokenizer | None
    """Its tokenizer as a lab Tokenizer; None when the source has none."""
    origin: dict[str, Any]
    """The lineage record: kind (hub, folder, run), the source as given, and what pins it."""


@dataclass(frozen=True)
class _Where:
    """A located source: its kind, its HF folder or checkpoint file, what pins it, and how a
    resolved config names it (``pin``: a Hub id, or an absolute path that needs no runs root)."""

    kind: str
    path: Path
    pins: tuple[tuple[str, Any], ...] = ()
    pin: str = ""


# ------------------------------------------------------------------ reading a source


def load_pretrained(source: str, runs_root: Any = None) -> Pretrained:
    """The pretrained GPT ``source`` names: an HF folder or a .ckpt (paths), a lab run, or a Hub id.

    Read once per process and kept until ``initialize`` has copied it (keyed by where the source
    resolves to and the weights file's size and time). A source that cannot be read is a one-line
    ``LabError`` saying what to give instead.
    """
    where = _locate(source, runs_root)
    return dataclasses.replace(_load(where, source), origin=_origin(where, source))  # tensors shared, not copied


def tokenizer_of(source: str, runs_root: Any = None) -> Tokenizer | None:
    """The tokenizer of ``source`` alone (no weights are read, but for a lone .ckpt); None when it has none."""
    where = _locate(source, runs_root)
    run_dir = dict(where.pins).get("run_dir")
    if where.kind != "run":
        return load_hf_tokenizer(where.path)
    if run_dir and (Path(run_dir) / runs.TOKENIZER).is_file():
        return load_tokenizer(Path(run_dir) / runs.TOKENIZER)
    return _load(where, source).tokenizer


def lineage(source: str, runs_root: Any = None) -> dict[str, Any]:
    """What summary.json records as ``lineage`` (no tensors are loaded): ``{"kind": "hub"|"folder"|"run",
    "source": as given}`` plus what pins it -- the Hub snapshot's ``commit``; the folder's ``path`` and
    its weights file's ``sha256`` (hashed once per process); the ``run`` (``<experiment>/<run_id>``),
    ``checkpoint`` and ``path``."""
    return _origin(_locate(source, runs_root), source)


def read_hf_folder(folder: str | Path, source: str | None = None) -> Pretrained:
    """A Hugging Face GPT-2 folder as the lab's tensors (not kept; ``source`` names it in errors)."""
    folder = Path(folder)
    name = source or str(folder)
    config, weights = _hf_config(folder, name), _weights_file(folder, name)
    origin = {"kind": "folder", "source": name, "path": str(folder.resolve()), "weights": weights.name}
    return Pretrained(config, _from_hf(_read_weights(weights, name), name), load_hf_tokenizer(folder), origin)


_KEPT: dict[tuple[Any, ...], Pretrained] = {}
_HASHES: dict[tuple[Any, ...], str] = {}


def _load(where: _Where, source: str) -> Pretrained:
    # Keyed by where a source resolves to, not by its spelling: `resolve` pins a run name to its
    # folder, and build_module's copy must find the weights the check before the data read.
    key = (where, _stamp(where))
    if key not in _KEPT:
        _KEPT.clear()  # one model at a time: a second source would double the memory held
        _KEPT[key] = _read_run(where, source) if where.kind == "run" else read_hf_folder(where.path, source)
    return _KEPT[key]


def _stamp(where: _Where) -> tuple[Any, ...]:
    """What changes when the files do: a rewritten source is read again."""
    files = [where.path] if where.kind == "run" else [where.path / n for n in ("config.json", *WEIGHTS)]
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file())


def _origin(where: _Where, source: str) -> dict[str, Any]:
    pins = {k: v for k, v in where.pins if k != "run_dir"}
    if where.kind != "folder":
        return {"kind": where.kind, "source": source, **pins}
    weights, key = _weights_file(where.path, source), (where.path, _stamp(where))
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return {"kind": "folder", "source": source, "path": str(where.path), "weights": weights.name,
            "sha256": _HASHES[key]}


def _locate(source: str, runs_root: Any) -> _Where:
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix == ".ckpt":
            return _run_where(path.resolve())
        raise LabError(f"model.init_from {text}: a file, but not a .ckpt; give a folder in the Hugging Face "
                       "layout (config.json, model.safetensors), a lab run or a .ckpt")
    if path.is_dir():
        if (path / "config.json").is_file():
            return _Where("folder", path.resolve(), pin=str(path.resolve()))
        if (path / runs.CONFIG).is_file():
            return _run_where(_best_checkpoint(runs.load_run(path.resolve())))
        raise LabError(f"model.init_from {text}: the folder has neither config.json (a Hugging Face model) "
                       f"nor {runs.CONFIG} (a lab run)")
    try:
        run = runs.resolve_run(text, runs_root)
    except (LabError, OSError) as e:  # OSError: an unreadable runs folder
        not_a_run = str(e)
    else:
        return _run_where(_best_checkpoint(run))
    if _HUB_ID.fullmatch(text) and ".." not in text:
        return _from_hub(text)
    raise LabError(f"model.init_from {text}: no such folder or .ckpt, not a lab run ({not_a_run}), and not a "
                   "Hub id; give a Hub id (gpt2), a folder in the Hugging Face layout, or a run from `lab runs`")


def _best_checkpoint(run: runs.Run) -> Path:
    for which in ("best", "last"):
        if run.checkpoint(which).is_file():
            return run.checkpoint(which)
    raise LabError(f"model.init_from {run.name}: the run has no checkpoint yet (no best.ckpt or last.ckpt); "
                   "train it first or give another run")


def _run_where(ckpt: Path) -> _Where:
    """A checkpoint; inside a run folder (``<run>/checkpoints/x.ckpt``) the run names it."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    if run_dir is not None and not (run_dir / runs.CONFIG).is_file():
        run_dir = None
    pins = (("run", f"{run_dir.parent.name}/{run_dir.name}" if run_dir else None), ("checkpoint", ckpt.name),
            ("path", str(ckpt)), ("run_dir", str(run_dir) if run_dir else None))
    return _Where("run", ckpt, pins, pin=str(run_dir or ckpt))


_SNAPSHOTS: dict[str, _Where] = {}


def _from_hub(repo_id: str) -> _Where:
    """The Hub snapshot of ``repo_id`` in the HF cache: updated when the Hub answers, else the cached one.
    Asked once per process (a fit locates its source several times; an unreachable Hub can be slow to say so)."""
    if repo_id in _SNAPSHOTS and _SNAPSHOTS[repo_id].path.is_dir():
        return _SNAPSHOTS[repo_id]
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise LabError(f"model.init_from {repo_id}: reading a Hub id needs huggingface_hub "
                       "(pip install huggingface_hub), or give a local folder") from None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        if not (folder / WEIGHTS[0]).is_file():  # an older repo: pickle-format weights
            folder = Path(snapshot_download(repo_id, allow_patterns=[WEIGHTS[1]]))
    except Exception as e:  # huggingface_hub raises many types; each becomes one line
        kind = type(e).__name__
        if "LocalEntryNotFound" in kind or "OfflineMode" in kind:
            why = f"it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached"
        elif "RepositoryNotFound" in kind or "GatedRepo" in kind:
            why = "no such model on the Hub (or it is private or gated: log in with `hf auth login`)"
        else:
            why = f"{kind}: {(str(e).splitlines() or [''])[0][:160]}"
        raise LabError(f"model.init_from {repo_id}: {why}; check the name, download it once online "
                       "(HF_HOME says where the cache is), or give a local folder") from None
    _SNAPSHOTS[repo_id] = _Where("hub", folder, (("repo_id", repo_id), ("commit", folder.name)), pin=repo_id)
    return _SNAPSHOTS[repo_id]


def _read_run(where: _Where, source: str) -> Pretrained:
    """A lab checkpoint: its config and tokenizer travel inside it (``LabModule.record``)."""
    from lab.checkpoints import load_checkpoint, restore_module
    from lab.config import from_dict
    from lab.modules import CHECKPOINT_RECORD

    state = load_checkpoint(where.path)
    record = state.get(CHECKPOINT_RECORD) if isinstance(state.get(CHECKPOINT_RECORD), dict) else {}
    if not isinstance(record.get("config"), dict) or not isinstance(state.get("state_dict"), dict):
        raise LabError(f"model.init_from {source}: {where.path} carries no config or weights (not written by "
                       "`lab fit`); give another run")
    model_cfg = from_dict(record["config"]).model
    if not isinstance(model_cfg, GPTConfig):
        raise LabError(f"model.init_from {source}: a {model_cfg.name} run, not a GPT; give a GPT run")
    run_dir = dict(where.pins).get("run_dir")
    if isinstance(record.get("tokenizer"), str):
        tokenizer = parse_tokenizer(record["tokenizer"], f"the tokenizer in {where.path}")
    else:
        tokenizer = load_tokenizer(Path(run_dir) / runs.TOKENIZER) if run_dir else None
    # Rebuilt through the run's own config, not read off the state dict: a LoRA run's checkpoint
    # holds only its adapters (its base comes from its own init_from), and merging folds them in.
    weights = restore_module(from_dict(record["config"]), state["state_dict"], tokenizer).model.state_dict()
    return Pretrained(dataclasses.replace(model_cfg, init_from=None), weights, tokenizer, _origin(where, source))


# ------------------------------------------------------------------ the Hugging Face GPT-2 layout


def _hf_config(folder: Path, name: str) -> GPTConfig:
    """config.json as a GPTConfig; anything the lab's GPT cannot reproduce is refused."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LabError(f"model.init_from {name}: cannot read config.json ({e}); give a Hugging Face model folder")
    if not isinstance(raw, dict) or raw.get("model_type") != "gpt2":
        kind = raw.get("model_type") if isinstance(raw, dict) else None
        raise LabError(f"model.init_from {name}: config.json says model_type {kind!r}; the lab's GPT reads "
                       "GPT-2 models (model_type gpt2: gpt2, gpt2-medium, distilgpt2, ...) only")
    act, n_embd = raw.get("activation_function", "gelu_new"), raw.get("n_embd", 768)
    unlike = [f"{key}={raw.get(key)!r}" for key, ok in (
        ("activation_function", act in _FROM_HF),
        ("layer_norm_epsilon", raw.get("layer_norm_epsilon", 1e-5) == 1e-5),
        ("n_inner", raw.get("n_inner") in (None, 4 * n_embd)),
        ("scale_attn_weights", raw.get("scale_attn_weights", True) is True),
        ("scale_attn_by_inverse_layer_idx", not raw.get("scale_attn_by_inverse_layer_idx")),
        ("add_cross_attention", not raw.get("add_cross_attention")),
        ("tie_word_embeddings", raw.get("tie_word_embeddings", True) is True)) if not ok]
    if unlike:
        raise LabError(f"model.init_from {name}: config.json has {', '.join(unlike)}, which the lab's GPT "
                       "cannot reproduce (it has GPT-2's gelu_new or gelu, eps 1e-5, 4x MLP, tied head)")
    try:
        return GPTConfig(block_size=int(raw.get("n_positions", 1024)), vocab_size=int(raw.get("vocab_size", 50257)),
                         n_layer=int(raw.get("n_layer", 12)), n_head=int(raw.get("n_head", 12)), n_embd=int(n_embd),
                         dropout=float(raw.get("resid_pdrop", 0.1)), bias=True, activation=_FROM_HF[act])
    except (TypeError, ValueError) as e:
        raise LabError(f"model.init_from {name}: config.json has a malformed shape field ({e})") from None


def _weights_file(folder: Path, name: str) -> Path:
    found = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
    if found is None:
        raise LabError(f"model.init_from {name}: {folder} has config.json but no {' or '.join(WEIGHTS)} "
                       "(sharded weights are not read); add the weights file")
    return found


def _read_weights(file: Path, name: str) -> dict[str, torch.Tensor]:
    if file.suffix == ".bin":
        from lab.checkpoints import CheckpointError, load_checkpoint

        try:
            tensors = load_checkpoint(file)  # torch.load(weights_only=True): a pickle cannot run code
        except CheckpointError as e:
            raise LabError(f"model.init_from {name}: {e.problem}") from None
        if not isinstance(tensors, dict) or not all(torch.is_tensor(t) for t in tensors.values()):
            raise LabError(f"model.init_from {name}: {file.name} is not a state dict of tensors")
        return tensors
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for a truncated or damaged file
        raise LabError(f"model.init_from {name}: {file.name} is truncated or damaged "
                       f"({(str(e).splitlines() or [''])[0][:120]}); download it again") from None


def _from_hf(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """GPT-2's names (with or without ``transformer.``) -> the lab GPT's; Conv1D weights transposed."""
    out = {f"transformer.{k.removeprefix('transformer.')}": t.t().contiguous() if _CONV1D.search(k) else t
           for k, t in tensors.items() if k != "lm_head.weight" and not _MASKS.search(k)}
    wte, head = out.get("transformer.wte.weight"), tensors.get("lm_head.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise LabError(f"model.init_from {name}: lm_head.weight differs from transformer.wte.weight; the lab's "
                       "GPT ties them (GPT-2 does), so an untied head cannot be loaded")
    if wte is not None:
        out["lm_head.weight"] = wte
    return out


def _to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """The lab GPT's tensors under GPT-2's names; zero biases where the lab has none (GPT-2 always has them)."""
    out = {name: (t.t() if _CONV1D.search(name) else t).detach().contiguous()
           for name, t in model.state_dict().items() if name != "lm_head.weight"}  # tied: stored once, as HF does
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is None and name != "lm_head":
            width = m.out_features if isinstance(m, nn.Linear) else m.normalized_shape[0]
            out[f"{name}.bias"] = torch.zeros(width, dtype=m.weight.dtype)
    return out


def save_hf(model: GPT, tokenizer: Tokenizer | None, folder: Path) -> None:
    """Write ``model`` as a Hugging Face GPT-2 folder: config.json, model.safetensors, tokenizer.json.

    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it (GPT2LMHeadModel), and
    ``read_hf_folder(folder)`` gives back the same tensors bitwise. A character tokenizer is written
    as an HF WordLevel tokenizer.json (it cannot be GPT-2's byte-level BPE).
    """
    from safetensors.torch import save as safetensors_bytes

    c = model.config
    end = tokenizer.hf.token_to_id(GPT2_END_OF_TEXT) if hasattr(tokenizer, "hf") else None  # GPT-2's bos = eos
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
              "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
              "n_inner": None, "activation_function": _TO_HF[c.activation], "layer_norm_epsilon": 1e-5,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
              "use_cache": True, "bos_token_id": end, "eos_token_id": end,
              "dtype": str(model.transformer.wte.weight.dtype).removeprefix("torch.")}
    tensors = _to_hf(model)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "model.safetensors", lambda f: f.write(safetensors_bytes(tensors, {"format": "pt"})))
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
    if tokenizer is not None:
        text = tokenizer.to_hf().to_str() if isinstance(tokenizer, CharTokenizer) else tokenizer.to_json()
        atomic_write_text(folder / "tokenizer.json", text)


# ------------------------------------------------------------------ into a model, and into a run


def load_gpt(model: nn.Module, pre: Pretrained) -> None:
    """The GPT family's ``pretrained`` hook: check every tensor against ``pre``, then copy it in.

    A mismatch is one ``LabError`` line naming the tensor and both shapes (or the field, for
    n_head and activation, which no tensor shows). A shorter ``block_size`` takes the first
    rows of the position table. A model on the meta device is only checked.
    """
    target, weights, wpe = model.state_dict(), dict(pre.state_dict), "transformer.wpe.weight"
    if wpe in weights and wpe in target and weights[wpe].shape[0] > target[wpe].shape[0]:
        weights[wpe] = weights[wpe][: target[wpe].shape[0]]
    problem = _mismatch(target, weights)
    c, s = model.config, pre.config
    for field in ("n_head", "activation"):
        if problem is None and getattr(c, field) != getattr(s, field):
            problem = f"model.{field} is {getattr(s, field)!r} there but {getattr(c, field)!r} in this config"
    if problem is not None:
        raise LabError(f"model.init_from {pre.origin.get('source')}: {problem}: {_advice(s)}")
    if not any(p.is_meta for p in model.parameters()):
        with torch.no_grad():
            model.load_state_dict(weights, strict=True)


def _mismatch(target: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str | None:
    for name, t in target.items():
        if name not in weights:
            return f"{name} is missing there (this config needs {list(t.shape)})"
        if weights[name].shape != t.shape:
            return f"{name} is {list(weights[name].shape)} there but {list(t.shape)} in this config"
    extra = next((n for n in weights if n not in target), None)
    return None if extra is None else f"{extra} is there ({list(weights[extra].shape)}) but not in this config"


def _advice(s: GPTConfig) -> str:
    """What to set: the source's shape, and a preset that has it."""
    from lab.config import list_presets, load_config

    shape = dict(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, bias=s.bias, activation=s.activation)
    presets = {p: load_config(p).model for p in sorted(list_presets())}
    preset = next((p for p, m in presets.items() if all(getattr(m, k, None) == v for k, v in shape.items())
                   and getattr(m, "vocab_size", 0) in (None, s.vocab_size)), None)
    return (f"give the model the source's shape (n_layer {s.n_layer}, n_head {s.n_head}, n_embd {s.n_embd}, "
            f"vocab_size {s.vocab_size} or null, bias {str(s.bias).lower()}, activation {s.activation}, "
            f"block_size at most {s.block_size})" + (f", e.g. --config {preset}" if preset else ""))


def resolve(cfg: "Config", runs_root: Any = None) -> Any:
    """The model config to train from ``model.init_from``, or a one-line refusal before any data is read.

    The source is read (and kept for ``initialize``), its tokenizer required, a null vocabulary
    filled in from it, and the source pinned (a run name becomes its folder's path, so the later
    steps need no runs root). Every tensor is checked on a meta-device model: no memory, no time.
    """
    from lab.families import family_of

    fam, model_cfg = family_of(cfg), cfg.model
    _refuse_family(fam)
    where = _locate(model_cfg.init_from, runs_root)
    pre = dataclasses.replace(_load(where, model_cfg.init_from), origin=_origin(where, model_cfg.init_from))
    if pre.tokenizer is None:
        raise LabError(f"model.init_from {model_cfg.init_from}: it has no tokenizer (tokenizer.json, or vocab.json "
                       "+ merges.txt), and its embeddings mean nothing without one; add the tokenizer files")
    if getattr(model_cfg, "vocab_size", 0) is None:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=pre.config.vocab_size)
    model_cfg = dataclasses.replace(model_cfg, init_from=where.pin)
    data = SimpleNamespace(tokenizer=pre.tokenizer, vocab_size=pre.tokenizer.vocab_size)  # all the data adds here
    try:
        with torch.device("meta"):
            model = fam.build(fam.complete(model_cfg, data) if fam.complete is not None else model_cfg)
    except LabError:  # it needs the data to be built (a classifier's classes): checked then, still before the run
        return model_cfg
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*copying from a non-meta parameter")  # a hook's load_state_dict
        fam.pretrained(model, pre)
    return model_cfg


def initialize(model: nn.Module, cfg: "Config", runs_root: Any = None) -> dict[str, Any]:
    """Copy ``cfg.model.init_from``'s weights into ``model`` with its family's ``pretrained`` hook, and let
    the kept copy go; returns the lineage record."""
    from lab.families import family_of

    fam = family_of(cfg)
    _refuse_family(fam)
    pre = load_pretrained(cfg.model.init_from, runs_root)
    fam.pretrained(model, pre)
    _KEPT.clear()  # the model holds the weights now: a second copy would only take memory
    return pre.origin


def _refuse_family(fam: Any) -> None:
    if fam.pretrained is None:
        raise LabError(f"model.init_from is set, but {fam.name} models cannot start from pretrained weights; "
                       "remove it")
