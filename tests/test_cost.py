"""lab.cost: batches from real inputs, latency bookkeeping, interleaved comparison, memory, size, parameters.

No test asserts a speed: these machines are shared and noisy (benchmarks/ measure speed).
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lab.cost import compare_latency, cost, fixed_threads, make_batch, num_params, peak_memory, state_bytes
from lab.models.gpt import GPT, GPTConfig


def test_make_batch_cycles_the_real_rows() -> None:
    example = torch.arange(6).view(3, 2)
    assert make_batch(example, 5).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]]
    assert make_batch(example, 2).tolist() == [[0, 1], [2, 3]]


def test_fixed_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    with fixed_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with fixed_threads(None) as n:  # None keeps the current count
        assert n == before


def test_cost_times_every_batch_size_with_consistent_figures() -> None:
    seen: list[int] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x.float() * 2

    c = cost(predict, torch.randint(0, 9, (3, 16)), batch_sizes=(4, 1, 4), warmup=2, repeats=5, threads=1)
    assert c["threads"] == 1 and c["input_shape"] == [16]
    assert set(c["latency"]) == {"b1", "b4"}
    # one memory probe at the largest batch, then warm-up + timed calls per batch size, smallest first
    assert seen == [4] + [1] * 7 + [4] * 7
    for b, entry in ((1, c["latency"]["b1"]), (4, c["latency"]["b4"])):
        assert 0 < entry["p50_ms"] <= entry["p95_ms"]
        assert entry["samples_per_s"] == pytest.approx(b / (entry["p50_ms"] / 1000))
        assert entry["tokens_per_s"] == pytest.approx(16 * entry["samples_per_s"])  # token ids: 16 per sample
    with pytest.raises(Exception, match="repeats"):
        cost(predict, torch.zeros(1, 2), repeats=0)


def test_compare_latency_interleaves_the_two_and_reports_their_ratio() -> None:
    order: list[str] = []
    result = compare_latency(lambda x: order.append("a"), lambda x: order.append("b"), torch.zeros(2, 3),
                             batch_sizes=(2,), warmup=1, repeats=4, threads=1)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B, B A, ...
    r = result["b2"]
    assert r["ratio"] == pytest.approx(r["p50_ms"] / r["baseline_p50_ms"])
    assert r["speedup"] == pytest.approx(1 / r["ratio"])


def test_peak_memory_sees_a_large_allocation_inside_the_call() -> None:
    def predict(x: torch.Tensor) -> torch.Tensor:
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched, then freed
        return big.sum() + x.sum()

    m = peak_memory(predict, torch.zeros(1))
    assert m["peak_rss_mb"] > 0
    if "VmHWM" in m["method"]:  # Linux: the high-water mark is reset before the call
        assert m["increase_mb"] >= 60


def test_size_and_parameters_count_tied_weights_once() -> None:
    gpt = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16, block_size=8))
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    assert num_params(gpt) == sum(p.numel() for p in {id(p): p for p in gpt.parameters()}.values())
    buf = io.BytesIO()
    torch.save(gpt.state_dict(), buf)
    assert state_bytes(gpt) == buf.tell()
    lin = nn.Linear(100, 100)
    assert num_params(lin) == 100 * 100 + 100
    assert state_bytes(lin) > 4 * num_params(lin)  # fp32 payload plus the file's own framing
