"""How fast a device multiplies matrices: the published table, the matmul probe, the cached CPU peak.

    from lab.env.peak import KNOWN_ACCELERATORS, known_accelerator, matmul_flops, peak_flops
    KNOWN_ACCELERATORS["H100"].bf16_flops     # 989e12: dense bf16 peak from the data sheet
    known_accelerator("NVIDIA A100-SXM4-80GB")  # the table's A100 entry (None for a GPU not in it)
    matmul_flops(1024)                        # achieved FLOP/s of a 1024 x 1024 fp32 matmul on the CPU
    peak_flops("cpu")                         # measured once per CPU and thread count, then cached

This is the one home of these facts: ``lab.env`` (MFU for the throughput callback), ``lab.env.bench``
(``lab doctor --bench``) and ``lab.plan`` (step times) all read them from here, and this module
imports neither of them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Callable

import torch

from lab.env import probe
from lab.fileio import default_cache_dir, write_json


@dataclass(frozen=True)
class Accelerator:
    """A device: its memory and dense peak FLOP/s (what ``lab plan`` plans for)."""

    name: str
    """A100, H100, H200, L4, ..., cpu, or the detected GPU's name."""
    memory: int
    """Bytes of device memory (for the CPU: host RAM, shared by every process on the machine)."""
    bf16_flops: float
    """Dense peak for 16-bit matmuls (CPU: the measured fp32 matmul peak)."""
    fp32_flops: float
    """Dense peak for fp32 matmuls without TF32."""
    kind: str = "gpu"
    """gpu or cpu."""
    source: str = "named"
    """named (from the table), detected (this machine) or measured (the CPU's matmul probe)."""
    bf16: bool = True
    """Has bf16 matmuls (a V100 does not: it trains with 16-mixed)."""


# Vendor data sheets (dense, no sparsity; SXM parts), memory as nvidia-smi reports it. The V100
# (32 GB) has no bf16: its 16-bit figure is the fp16 tensor-core peak, which 16-mixed uses.
KNOWN_ACCELERATORS: dict[str, Accelerator] = {
    "A100": Accelerator("A100", 81920 * 2**20, 312e12, 19.5e12),
    "A100-40GB": Accelerator("A100-40GB", 40960 * 2**20, 312e12, 19.5e12),
    "H100": Accelerator("H100", 81559 * 2**20, 989e12, 67e12),
    "H200": Accelerator("H200", 143771 * 2**20, 989e12, 67e12),
    "L4": Accelerator("L4", 23034 * 2**20, 121e12, 30.3e12),
    "A10G": Accelerator("A10G", 23028 * 2**20, 125e12, 31.2e12),
    "V100": Accelerator("V100", 32768 * 2**20, 125e12, 15.7e12, bf16=False),
}


def known_accelerator(device_name: str) -> Accelerator | None:
    """The table's entry for a GPU name as torch reports it ("NVIDIA H100 80GB HBM3" -> H100), or None."""
    for key, acc in KNOWN_ACCELERATORS.items():
        # Not next to a digit: an L40S is not an L4 (a GH200 is an H200 as far as its peak goes).
        if re.search(rf"(?<![0-9]){re.escape(key)}(?![0-9])", device_name.upper()):
            return acc
    return None


def best_seconds(fn: Callable[[], object], seconds: float, sync: Callable[[], None] = lambda: None) -> float:
    """Fastest of repeated timings of ``fn()`` (each followed by ``sync()``) over about ``seconds``.

    The best, not the mean: a busy machine only ever makes a measurement slower.
    """
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def device_sync(device: str) -> Callable[[], None]:
    """What waits for ``device``'s queued work: ``torch.cuda.synchronize`` on a GPU, nothing on the CPU."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def matmul_flops(n: int = 1024, dtype: torch.dtype = torch.float32, device: str = "cpu", seconds: float = 0.5) -> float:
    """Achieved FLOP/s of an n x n matmul, best of repeated timings over about ``seconds``."""
    # Own generator: measuring must not move the global RNG, or a run that measures the peak
    # (cold cache) would draw different dropout masks from one that reads it from the cache.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
    b = torch.randn(n, n, dtype=dtype, device=device, generator=gen)
    sync = device_sync(device)
    for _ in range(2):  # warm-up: thread pools, caches
        a @ b
    sync()
    return 2 * n**3 / best_seconds(lambda: a @ b, seconds, sync)


def peak_flops(device: torch.device | str = "cpu", refresh: bool = False) -> float:
    """Peak FLOP/s for MFU: a GPU's published bf16 peak, or the CPU's measured fp32 matmul peak.

    The CPU figure is measured once per CPU model, instruction set and thread count and cached
    in ``cache_dir()``: a home folder shared by different machines (a cluster's, a container
    image's) must not hand one CPU's peak to another.
    """
    device = torch.device(device)
    if device.type == "cuda":
        known = known_accelerator(torch.cuda.get_device_name(device))
        return known.bf16_flops if known else matmul_flops(4096, torch.bfloat16, str(device))
    threads = torch.get_num_threads()
    path = default_cache_dir() / "peak_flops.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}  # a damaged cache is re-measured, not a crash
    cpu = probe.cpu_info()
    key = f"cpu-{threads} {cpu['model']} {cpu['torch_cpu_capability']}"
    if refresh or key not in cached:
        # Keep the best probe: a busy machine only ever measures low, and an understated
        # peak would overstate MFU.
        cached[key] = max(matmul_flops(1024), float(cached.get(key, 0.0)))
        try:
            write_json(path, cached)
        except OSError:
            pass  # a read-only home still gets a measured (uncached) peak
    return float(cached[key])
