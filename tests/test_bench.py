"""lab doctor --bench: the measurements run, the all-reduce works across 2 processes, the peak is cached for MFU."""

from __future__ import annotations

import json
import os
import time

import pytest

from lab import env
from lab.env import bench, peak, probe
from lab.env.text import bench_lines
from lab.fileio import default_cache_dir


def test_memory_bandwidth_counts_a_read_and_a_write_per_copied_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.memory_bandwidth("cpu", nbytes=8 * 2**20, seconds=0.05)
    assert 1e8 < real < 1e13  # 100 MB/s .. 10 TB/s: any machine that runs the lab, not a unit slip
    monkeypatch.setattr(bench, "best_seconds", lambda fn, seconds, sync: 0.5)
    assert bench.memory_bandwidth("cpu", nbytes=2**20, seconds=0.05) == 2 * 2**20 / 0.5


def test_allreduce_between_two_local_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    r = bench.allreduce(world_size=2, nbytes=2**20, timeout=120)
    # The workers pick gloo's interface themselves: the caller (a notebook kernel) keeps its environment.
    assert "GLOO_SOCKET_IFNAME" not in os.environ
    assert "error" not in r, r
    assert r["backend"] == "gloo" and r["world_size"] == 2
    assert r["latency_s"] > 0 and r["bus_bandwidth"] > 0 and r["bytes"] == 2**20


def test_run_caches_the_measured_peak_for_the_mfu_callback(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # A cache of its own: the session's cached peak must stay the real one for the training tests.
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    # Fake the slow parts: the point is where the numbers go, not how fast this machine is.
    monkeypatch.setattr(peak, "matmul_flops", lambda n=1024, dtype=None, device="cpu", seconds=0.5: 1.25e11)
    monkeypatch.setattr(bench, "memory_bandwidth", lambda *a, **k: 9e9)
    monkeypatch.setattr(bench, "allreduce", lambda *a, **k: {"backend": "gloo", "world_size": 2, "latency_s": 1e-4,
                                                            "bytes": 2**20, "seconds": 1e-3, "bus_bandwidth": 1e9})
    result = bench.run(seconds=0.01)
    assert result["cpu_matmul_fp32"] == result["peak_flops_cached"] == 1.25e11
    # What lab.train hands the Throughput callback: the cached measurement, not a new probe.
    monkeypatch.setattr(peak, "matmul_flops", lambda *a, **k: pytest.fail("peak_flops should read the cache"))
    assert env.peak_flops("cpu") == 1.25e11
    assert json.loads((default_cache_dir() / "bench.json").read_text())["host_memory_bandwidth"] == 9e9
    assert bench.last()["allreduce"]["bus_bandwidth"] == 1e9
    text = "\n".join(bench_lines(result))
    assert "CPU matmul fp32" in text and "125 GFLOP/s" in text and "all-reduce latency" in text


def test_a_failed_measurement_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a, **k):
        raise RuntimeError("no bf16 here")

    monkeypatch.setattr(peak, "matmul_flops", broken)
    assert bench._safe(peak.matmul_flops, 1024).startswith("error: RuntimeError")
    lines = "\n".join(bench_lines({"cpu_matmul_bf16": "error: RuntimeError: no bf16 here",
                                   "allreduce": {"backend": "gloo", "error": "timed out after 60 s"}}))
    assert "error: RuntimeError" in lines and "failed: timed out" in lines


def test_cached_peak_belongs_to_one_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # A home folder moved to (or shared with) another machine: its cached peak is not this CPU's.
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(peak, "matmul_flops", lambda *a, **k: 1.0e11)
    assert env.peak_flops("cpu") == 1.0e11
    monkeypatch.setattr(peak, "matmul_flops", lambda *a, **k: pytest.fail("same CPU: read the cache"))
    assert env.peak_flops("cpu") == 1.0e11
    real = probe.cpu_info
    monkeypatch.setattr(probe, "cpu_info", lambda: {**real(), "model": "Another CPU"})
    monkeypatch.setattr(peak, "matmul_flops", lambda *a, **k: 3.0e11)
    assert env.peak_flops("cpu") == 3.0e11


def test_a_damaged_peak_cache_is_measured_again(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    (tmp_path / "peak_flops.json").write_text("[1, 2]")  # valid JSON, but not the table
    monkeypatch.setattr(peak, "matmul_flops", lambda *a, **k: 2.0e11)
    assert env.peak_flops("cpu") == 2.0e11
    assert list(json.loads((tmp_path / "peak_flops.json").read_text()).values()) == [2.0e11]


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA H200", "H200"),
    ("NVIDIA A10G", "A10G"), ("Tesla V100-SXM2-32GB", "V100"), ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 4090", None),  # an L40S is not an L4: no published peak here
])
def test_gpu_names_find_their_row_of_the_one_table(name: str, key: str | None) -> None:
    found = peak.known_accelerator(name)
    assert found is (peak.KNOWN_ACCELERATORS[key] if key else None)


def test_the_planner_and_the_mfu_peak_read_the_same_table() -> None:
    from lab import plan

    assert plan.KNOWN_ACCELERATORS is peak.KNOWN_ACCELERATORS and plan.Accelerator is peak.Accelerator


def test_best_seconds_keeps_the_fastest_timing() -> None:
    waits = iter([0.02, 0.0, 0.01] + [0.01] * 10_000)  # the mean (or the last) would be >= 0.01
    assert peak.best_seconds(lambda: time.sleep(next(waits)), seconds=0.05) < 0.01
