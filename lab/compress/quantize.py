"""``int8-dynamic``: int8 dynamic quantization of the Linear layers, on the fastest backend here.

    from lab.compress import compress
    report = compress(run, "int8-dynamic")          # compressed/int8-dynamic/model_int8.pt + report.json
    report["backend"], report["notes"]["candidates"]

Weights become int8 once; activations are quantized on the fly per batch. Two backends
are probed on the real model with a real validation batch, and the faster one is kept
(the report names it and holds both timings):

- ``torch.ao.quantization.quantize_dynamic`` (fbgemm/x86 kernels). Deprecated and due to be
  removed from torch, so it is probed, never assumed.
- torchao's ``Int8DynamicActivationInt8WeightConfig`` (its successor), when torchao is
  installed. In eager mode on CPU it has been measured slower than fp32.

The quantized state is saved with ``torch.save(state_dict)``: packed int8 weights, scales
and zero points are plain tensors, so ``load_int8`` reads it back with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from lab.compress import Artifact
from lab.errors import LabError
from lab.families import family_of

TORCH_AO = "torch.ao.quantization.quantize_dynamic"
TORCHAO = "torchao.quantization.Int8DynamicActivationInt8WeightConfig"
BACKENDS = {"torch.ao": TORCH_AO, "torchao": TORCHAO}
WEIGHTS_FILE = "model_int8.pt"


LINEAR = (nn.Linear,)
"""What int8-dynamic quantizes unless a family's record says otherwise (``ModelFamily.int8_targets``)."""
TABLES = (nn.Embedding, nn.EmbeddingBag)
"""Lookup tables: quantized weight-only, one float scale and offset per row (a recommender's users and items)."""


def quantize_torch_ao(model: nn.Module, targets: tuple[type[nn.Module], ...] = LINEAR) -> nn.Module:
    """int8 weights + dynamic int8 activations for every ``targets`` module (a copy; ``model`` is kept).

    An embedding table has no activations to quantize: its rows are stored in 8 bits with a
    float scale and offset each (torch.ao's only scheme for ``nn.Embedding``), so a row of
    rare values keeps its own resolution.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice: the probe is how we cope with it
        from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

        spec = {t: float_qparams_weight_only_qconfig if issubclass(t, TABLES) else default_dynamic_qconfig
                for t in targets}
        return quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Import torchao without its console noise: it logs "Failed to load" for its GPU-only
    kernels (mxfp8, CUTLASS sm90a), "no triton", and torch logs a pytree deprecation that
    torchao triggers. None of it concerns CPU int8, and all of it alarms a user."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def quantize_torchao(model: nn.Module, targets: tuple[type[nn.Module], ...] = LINEAR) -> nn.Module:
    """The same with torchao's kernels (its int8 linear: only ``nn.Linear`` among ``targets`` applies)."""
    others = {type(m).__name__ for m in model.modules() if isinstance(m, targets) and not isinstance(m, nn.Linear)}
    if others:  # it would leave them fp32, and win the timing by not quantizing
        raise ValueError(f"this backend quantizes Linear layers only, and the model's {', '.join(sorted(others))} "
                         "layers are targets too")
    with quiet_torchao_import():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        q = copy.deepcopy(model).eval()
        quantize_(q, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and isinstance(m, targets))
        return q


QUANTIZERS: dict[str, Callable[..., nn.Module]] = {TORCH_AO: quantize_torch_ao, TORCHAO: quantize_torchao}


def available() -> dict[str, str]:
    """Backend name -> "ok" or why it cannot run in this installation."""
    out = {}
    try:
        import torch.ao.quantization as q

        out[TORCH_AO] = "ok" if hasattr(q, "quantize_dynamic") else "torch.ao.quantization has no quantize_dynamic"
    except ImportError as e:
        out[TORCH_AO] = f"not importable: {e}"
    try:
        with quiet_torchao_import():
            import torchao.quantization as tq

        out[TORCHAO] = "ok" if hasattr(tq, "Int8DynamicActivationInt8WeightConfig") else "torchao too old"
    except Exception as e:  # ImportError, or a torchao built for another torch
        out[TORCHAO] = f"not importable: {type(e).__name__}: {str(e)[:120]}"
    return out


def p50_ms(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, warmup: int = 2, repeats: int = 7) -> float:
    return round_robin({"fn": fn}, x, warmup, repeats)["fn"]


def round_robin(fns: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, warmup: int = 2,
                repeats: int = 7) -> dict[str, float]:
    """Median ms per function, timed in turns (one call each per round, order rotating)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                fns[n](x)
        for i in range(repeats):
            for n in names[i % len(names):] + names[: i % len(names)]:
                start = time.perf_counter()
                fns[n](x)
                times[n].append(time.perf_counter() - start)
    return {n: sorted(t)[len(t) // 2] * 1000 for n, t in times.items()}


def load_int8(path: str | Path, model: nn.Module, targets: tuple[type[nn.Module], ...] = LINEAR) -> nn.Module:
    """Rebuild the torch.ao int8 model: quantize ``model``'s structure, load the saved state.

    ``model`` is any fp32 model of the same config (its weights are all overwritten);
    loading uses ``torch.load(weights_only=True)``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage notices from rebuilding quantized tensors
        state = torch.load(path, map_location="cpu", weights_only=True)
    q = quantize_torch_ao(model, targets)
    q.load_state_dict(state)
    return q.eval()


def quantized_text(targets: tuple[type[nn.Module], ...], model: nn.Module | None = None) -> str:
    """What the report says int8-dynamic did to a family's ``int8_targets`` (those ``model`` has, when given)."""
    if model is not None:
        targets = tuple(t for t in targets if any(type(m) is t for m in model.modules()))
    layers = [t.__name__ for t in targets if not issubclass(t, TABLES)]
    tables = [t.__name__ for t in targets if issubclass(t, TABLES)]
    done = ([f"{', '.join(layers)} weights int8 (per-tensor), activations int8 per batch"] if layers else []) + \
        ([f"{', '.join(tables)} tables int8 per row (weight-only: a float scale and offset per row)"] if tables else [])
    return "; ".join(done or ["nothing (the family names no layer types)"]) + "; everything else stays fp32"


def int8_dynamic(module: Any, dm: Any, cfg: Any, out_dir: Path, backend: str = "auto", probe_batch: int = 8,
                 probe_repeats: int = 9, **_: Any) -> Artifact:
    """Quantize ``module.model``'s Linear layers to int8 on the backend measured fastest."""
    from lab.cost import make_batch, num_params
    from lab.evaluate import example_batch

    if backend != "auto" and backend not in BACKENDS:
        raise LabError(f"--backend must be auto or one of {', '.join(BACKENDS)}, got {backend!r}")
    model = module.model.eval()
    targets = family_of(cfg).int8_targets
    x = make_batch(example_batch(dm, "val"), int(probe_batch))
    status = available()
    wanted = list(BACKENDS.values()) if backend == "auto" else [BACKENDS[backend]]
    candidates: dict[str, dict[str, Any]] = {}
    built: dict[str, nn.Module] = {}
    for name in BACKENDS.values():
        if name not in wanted:
            candidates[name] = {"skipped": f"--backend {backend}"}
            continue
        if status[name] != "ok":
            candidates[name] = {"unavailable": status[name]}
            continue
        try:
            q = QUANTIZERS[name](model, targets)
            with torch.inference_mode():
                q(x)  # a backend that cannot run this model fails here
        except Exception as e:  # reported, not fatal
            candidates[name] = {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            continue
        built[name] = q
    if not built:
        raise LabError(f"no int8 backend could quantize this model: {candidates}")
    # fp32 and every candidate timed in turns, so a busy machine slows them alike.
    timed = round_robin({"fp32": model, **built}, x, repeats=probe_repeats)
    fp32_ms = timed["fp32"]
    for name in built:
        candidates[name] = {"p50_ms": timed[name], "speedup_vs_fp32": fp32_ms / timed[name]}
    chosen = min(built, key=lambda n: candidates[n]["p50_ms"])
    q = built[chosen]
    path = out_dir / WEIGHTS_FILE
    torch.save(q.state_dict(), path)
    notes: dict[str, Any] = {
        "probe": {"batch": int(probe_batch), "repeats": probe_repeats, "threads": torch.get_num_threads(),
                  "fp32_p50_ms": fp32_ms, "timing": "fp32 and candidates in turns on one real validation batch"},
        "candidates": candidates, "chosen_because": "lowest measured p50 latency on a real validation batch",
        "quantized": quantized_text(targets, model),
    }
    if chosen == TORCH_AO:
        q = load_int8(path, model, targets)  # what is measured is what was saved, loaded with weights_only=True
        notes["load"] = "lab.compress.quantize.load_int8(path, fp32_model) -> torch.load(weights_only=True)"
    else:
        notes["load"] = "torchao tensor subclasses: torch.load needs torchao installed (and its safe globals)"
    params = num_params(model)
    return Artifact(predict=q, files=[path], params=params, backend=chosen, notes=notes, example_module=q)
