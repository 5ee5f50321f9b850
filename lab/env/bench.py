"""Short measurements of this machine, in seconds, not minutes: ``lab doctor --bench``.

    from lab.env import bench
    b = bench.run()        # {"cpu_matmul_fp32": 1.1e11, "cpu_matmul_bf16": ..., "host_memory_bandwidth": ...,
                           #  "gpu_...": (GPUs only), "allreduce": {"backend": "gloo", "latency_s": ..., ...}}
    bench.allreduce(world_size=2)          # 2 local processes: gloo on CPU, NCCL on 2+ GPUs
    bench.memory_bandwidth("cpu")          # bytes/s of a large tensor copy (read + write)

``run`` re-measures the CPU's fp32 matmul peak through ``lab.env.peak.peak_flops(refresh=True)``,
so the training throughput callback divides by this measurement when it reports MFU. It
also keeps the whole result in ``<cache>/bench.json``. Nothing here raises: a measurement
that fails is reported as an error string.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lab.env import peak
from lab.env.peak import best_seconds, device_sync
from lab.fileio import default_cache_dir, write_json
from lab.ports import free_port


def memory_bandwidth(device: str = "cpu", nbytes: int = 256 * 2**20, seconds: float = 0.3) -> float:
    """Bytes/s of copying an ``nbytes`` tensor into another (each copy reads and writes ``nbytes``)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    sync = device_sync(device)
    dst.copy_(src)  # warm-up: page faults on first touch are not bandwidth
    sync()
    return 2 * nbytes / best_seconds(lambda: dst.copy_(src), seconds, sync)


def host_to_device_bandwidth(nbytes: int = 256 * 2**20, seconds: float = 0.3) -> float:
    """Bytes/s from pinned host memory to GPU 0."""
    src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst.copy_(src)
    torch.cuda.synchronize()
    return nbytes / best_seconds(lambda: dst.copy_(src, non_blocking=True), seconds, torch.cuda.synchronize)


def _allreduce_worker(rank: int, world: int, port: int, backend: str, nbytes: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "gloo" and Path("/sys/class/net/lo").exists():
        # gloo otherwise resolves the hostname to pick an interface, which fails in some containers.
        # Set here, in the worker: set in the caller it would outlive the benchmark (a notebook's
        # kernel, and every `lab doctor` it starts, would then report it as the user's setting).
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # two processes on a small machine: do not fight over cores
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=dt.timedelta(seconds=30))
    sync = device_sync(str(device))

    def timings(t: torch.Tensor, repeats: int) -> list[float]:
        # A fixed count, not a deadline: every rank must call all_reduce the same number of times.
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            sync()
            out.append(time.perf_counter() - t0)
        return out

    try:
        small, big = torch.ones(1, device=device), torch.ones(nbytes // 4, device=device)
        timings(small, 5)  # warm-up: the first collectives set up connections
        lat = timings(small, 30)
        timings(big, 1)
        big_t = timings(big, 5)
        if rank == 0:
            # nccl-tests' bus bandwidth: an all-reduce moves 2(n-1)/n of the buffer over each link.
            best = min(big_t)
            Path(out).write_text(json.dumps({
                "backend": backend, "world_size": world, "latency_s": statistics.median(lat), "bytes": nbytes,
                "seconds": best, "bus_bandwidth": nbytes * 2 * (world - 1) / world / best}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def allreduce(world_size: int = 2, backend: str | None = None, nbytes: int = 16 * 2**20,
              timeout: float = 60.0) -> dict[str, Any]:
    """All-reduce latency (4 bytes, median of 30) and bus bandwidth (``nbytes``, best of 5) between local processes.

    gloo on the CPU; NCCL when there are at least ``world_size`` GPUs. Processes are started
    with ``torch.multiprocessing`` (spawn) and rendezvous on 127.0.0.1 at a free port.
    """
    import torch.multiprocessing as mp

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    with tempfile.TemporaryDirectory(prefix="lab-allreduce-") as tmp:
        out = os.path.join(tmp, "result.json")
        try:
            ctx = mp.start_processes(_allreduce_worker, args=(world_size, free_port(), backend, nbytes, out),
                                     nprocs=world_size, join=False, start_method="spawn")
            deadline = time.monotonic() + timeout
            while not ctx.join(timeout=0.5):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.kill()
                    return {"backend": backend, "world_size": world_size, "error": f"timed out after {timeout:.0f} s"}
            return json.loads(Path(out).read_text())
        except Exception as e:  # noqa: BLE001 - reported in the bench table, never raised
            return {"backend": backend, "world_size": world_size, "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}


def _safe(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return f"error: {type(e).__name__}: {e}"


def run(seconds: float = 0.3, allreduce_bytes: int = 16 * 2**20) -> dict[str, Any]:
    """Every measurement for this machine (a few seconds), cached in ``<cache>/bench.json``."""
    start = time.perf_counter()
    cpu_peak = peak.peak_flops("cpu", refresh=True)  # the MFU callback reads this cached value
    result: dict[str, Any] = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "cpu_matmul_fp32": cpu_peak,
        "cpu_matmul_bf16": _safe(peak.matmul_flops, 1024, torch.bfloat16, "cpu", seconds),
        "host_memory_bandwidth": _safe(memory_bandwidth, "cpu", 256 * 2**20, seconds),
    }
    if torch.cuda.is_available():
        result.update(
            gpu_name=torch.cuda.get_device_name(0),
            gpu_matmul_fp32=_safe(peak.matmul_flops, 4096, torch.float32, "cuda", seconds),
            gpu_matmul_bf16=_safe(peak.matmul_flops, 8192, torch.bfloat16, "cuda", seconds),
            gpu_memory_bandwidth=_safe(memory_bandwidth, "cuda", 2**30, seconds),
            host_to_gpu_bandwidth=_safe(host_to_device_bandwidth, 256 * 2**20, seconds),
        )
    result["allreduce"] = allreduce(2, nbytes=allreduce_bytes)
    result["peak_flops_cached"] = cpu_peak
    result["seconds"] = time.perf_counter() - start
    try:
        write_json(default_cache_dir() / "bench.json", result)
    except OSError:
        pass  # a read-only cache still gets the measurements
    return result


def last() -> dict[str, Any] | None:
    """The last ``run()`` result from the cache, or None."""
    try:
        return json.loads((default_cache_dir() / "bench.json").read_text())
    except (OSError, ValueError):
        return None
