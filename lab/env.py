"""What this machine is and how fast it can multiply matrices.

    from lab import env
    env.fingerprint()                 # {"python": "3.11.7", "torch": "2.13.0+cpu", ..., "device": "cpu"}
    env.peak_flops(torch.device("cpu"))   # measured once (matmul probe), then read from the cache

The measured peak is what the throughput callback divides by to report model-FLOPs
utilisation (MFU) on CPUs; GPUs use their published dense peak.
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

from lab.fileio import default_cache_dir, write_json

# Published dense peaks (FLOP/s) for bf16/fp16 tensor-core math, from the vendors' data sheets.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "V100": 125e12}


def fingerprint() -> dict[str, str]:
    """Versions and device a run was made with (stored in summary.json)."""
    import lightning

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "device": device,
        "torch_threads": str(torch.get_num_threads()),
    }


def matmul_flops(n: int = 1024, dtype: torch.dtype = torch.float32, device: str = "cpu", seconds: float = 0.5) -> float:
    """Achieved FLOP/s of an n x n matmul, best of repeated timings over about ``seconds``."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):  # warm-up: thread pools, caches
        a @ b
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device | str = "cpu", refresh: bool = False) -> float:
    """Peak FLOP/s for MFU: a GPU's published bf16 peak, or the CPU's measured fp32 matmul peak.

    The CPU figure is measured once per thread count and cached in ``cache_dir()``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak
        return matmul_flops(4096, torch.bfloat16, str(device))
    threads = torch.get_num_threads()
    path = default_cache_dir() / "peak_flops.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    key = f"cpu-{threads}"
    if refresh or key not in cached:
        cached[key] = matmul_flops(1024)
        try:
            write_json(path, cached)
        except OSError:
            pass  # a read-only home still gets a measured (uncached) peak
    return float(cached[key])
