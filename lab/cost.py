"""What running a model costs: latency, throughput, peak memory, size and parameters.

    from lab.cost import compare_latency, cost
    c = cost(predict, example_batch)                 # latency p50/p95 at batch 1 and 32, memory
    c["latency"]["b32"]["p50_ms"], c["peak_memory"]["peak_rss_mb"]
    compare_latency(model, quantized, example_batch)["b32"]["speedup"]

``predict`` is any callable from an input batch to outputs, so a PyTorch model, a quantized
module and an ONNX Runtime session are measured by the same code (``lab.evaluate`` and
``lab.compress`` use it). Latency is timed after warm-up with ``torch.set_num_threads``
fixed (and recorded); peak memory is the process's peak resident set (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``) during one call, which sees PyTorch, oneDNN and
ONNX Runtime allocations alike (``tracemalloc`` would only see Python objects).
"""

from __future__ import annotations

import io
import resource
import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from lab.errors import LabError

Predict = Callable[[torch.Tensor], torch.Tensor]


class fixed_threads:
    """Fix ``torch.set_num_threads`` inside the block and restore it afterwards."""

    def __init__(self, n: int | None) -> None:
        self.n = int(n) if n else torch.get_num_threads()

    def __enter__(self) -> int:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.before)


def is_token_ids(x: torch.Tensor) -> bool:
    """True for a language model's input: integer ids shaped [batch, sequence]."""
    return x.dim() == 2 and not x.is_floating_point()


def make_batch(example: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` rows cycled from ``example`` (real inputs at any batch size)."""
    idx = torch.arange(batch) % example.shape[0]
    return example[idx].contiguous()


def _proc_status() -> dict[str, int] | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmHWM", "VmRSS")}
    except (OSError, ValueError):
        return None


def peak_memory(predict: Predict, x: torch.Tensor) -> dict[str, Any]:
    """Peak resident memory of the process during one ``predict(x)`` call, and its increase.

    Linux: reset the high-water mark (``echo 5 > /proc/self/clear_refs``), read ``VmHWM``
    after the call. Elsewhere: ``resource.getrusage`` max RSS, which cannot be reset, so the
    increase may read 0 when an earlier peak was higher (the report says which ran).
    """
    before = _proc_status()
    reset = False
    if before is not None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
            reset = True
            before = _proc_status()
        except OSError:
            reset = False
    rss0 = before["VmRSS"] if before else None
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        predict(x)
    if reset:
        after = _proc_status()
        return {"method": "VmHWM after /proc/self/clear_refs=5 (process peak RSS during one call)",
                "peak_rss_mb": after["VmHWM"] / 2**20, "increase_mb": max(0, after["VmHWM"] - rss0) / 2**20}
    ru1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": "resource.getrusage ru_maxrss (not resettable: increase is a lower bound)",
            "peak_rss_mb": ru1 / 2**20, "increase_mb": max(0, ru1 - ru0) / 2**20}


def cost(predict: Predict, example_input: torch.Tensor, batch_sizes: Iterable[int] = (1, 32), warmup: int = 3,
         repeats: int = 20, threads: int | None = None, tokens_per_sample: int | None = None) -> dict[str, Any]:
    """Latency p50/p95 (ms) per batch size, throughput, and peak memory of ``predict``.

    Each batch size is warmed up ``warmup`` times, then timed ``repeats`` times with
    ``time.perf_counter`` under ``torch.inference_mode`` with the thread count fixed.
    Throughput is samples (and tokens, for token inputs) per second at the median latency.
    """
    if repeats < 1 or warmup < 0:
        raise LabError("repeats must be >= 1 and warmup >= 0")
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if tokens_per_sample is None and is_token_ids(example_input):
        tokens_per_sample = int(example_input.shape[1])
    latency: dict[str, Any] = {}
    with fixed_threads(threads) as n_threads:
        memory = peak_memory(predict, make_batch(example_input, max(batch_sizes)))
        with torch.inference_mode():
            for b in batch_sizes:
                x = make_batch(example_input, b)
                for _ in range(warmup):
                    predict(x)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    predict(x)
                    times.append(time.perf_counter() - start)
                ms = np.asarray(times) * 1000
                p50 = float(np.percentile(ms, 50))
                entry = {"batch": b, "p50_ms": p50, "p95_ms": float(np.percentile(ms, 95)),
                         "mean_ms": float(ms.mean()), "samples_per_s": b / (p50 / 1000)}
                if tokens_per_sample:
                    entry["tokens_per_s"] = b * tokens_per_sample / (p50 / 1000)
                latency[f"b{b}"] = entry
    return {"threads": n_threads, "warmup": warmup, "repeats": repeats, "input_shape": list(example_input.shape[1:]),
            "latency": latency, "peak_memory": memory}


def compare_latency(baseline: Predict, candidate: Predict, example_input: torch.Tensor,
                    batch_sizes: Iterable[int] = (1, 32), warmup: int = 3, repeats: int = 20,
                    threads: int | None = None) -> dict[str, Any]:
    """Latency of ``candidate`` relative to ``baseline``, timed alternately in the same window.

    Calls interleave (A B B A A B ...), so load from other processes on a shared machine
    slows both alike and the ratio of the medians stays meaningful even when the absolute
    figures drift between two separate measurements.
    """
    out: dict[str, Any] = {}
    with fixed_threads(threads), torch.inference_mode():
        for b in sorted({int(b) for b in batch_sizes}):
            x = make_batch(example_input, b)
            for _ in range(warmup):
                baseline(x)
                candidate(x)
            times: dict[int, list[float]] = {0: [], 1: []}
            fns = (baseline, candidate)
            for i in range(repeats):
                for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                    start = time.perf_counter()
                    fns[k](x)
                    times[k].append(time.perf_counter() - start)
            base, cand = (float(np.percentile(np.asarray(times[k]) * 1000, 50)) for k in (0, 1))
            out[f"b{b}"] = {"baseline_p50_ms": base, "p50_ms": cand, "ratio": cand / base, "speedup": base / cand}
    return out


def state_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the fp32 weights file (tied tensors once)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def num_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))  # a tied tensor is yielded once
