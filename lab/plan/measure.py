"""Measure what training really allocates, to hold ``lab plan``'s estimates to account.

    from lab.config import load_config
    from lab.plan.measure import measure
    m = measure(load_config("gpt-nano"), precision="bf16-mixed", micro_batch=8, steps=3)
    m.model_states      # bytes of parameters + gradients + optimizer states, as allocated
    m.peak              # peak bytes allocated during training (GPU: max_memory_allocated)

It trains ``steps`` optimizer steps of the config's model with the lab's LightningModule and
a Lightning Trainer on this machine's first device (random data of the right shape: memory
does not depend on the values). Model states are counted from the tensors themselves just
before the last optimizer step (when gradients and optimizer states all exist), each
storage once. The peak is ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU, where
torch keeps no such counter, it is the highest ``total_allocated`` among the profiler's
allocation events (``profile_memory=True``; the same events ``export_memory_timeline`` reads),
with profiling started before the model is built so every byte is counted.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lab.config import Config
from lab.families import build_module, family_of


@dataclass
class Measured:
    """Bytes a few real training steps allocated."""

    model_states: int
    """Parameters + gradients + optimizer states, each storage once."""
    weights: int
    """Parameters alone."""
    gradients: int
    """Gradients alone."""
    optimizer: int
    """Optimizer states alone."""
    peak: int | None
    """Peak bytes allocated while training (None when not measured)."""
    device: str
    """cpu or cuda."""
    method: str
    """How the peak was measured."""


class _StateBytes(L.Callback):
    """Counts parameter, gradient and optimizer-state storage just before each optimizer step."""

    def __init__(self) -> None:
        self.last: tuple[int, int, int] = (0, 0, 0)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        seen: set[int] = set()

        def size(tensors: Iterator[torch.Tensor]) -> int:
            total = 0
            for t in tensors:
                st = t.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
            return total

        params = list(pl_module.parameters())
        w = size(iter(params))
        g = size(p.grad for p in params if p.grad is not None)
        o = size(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))
        self.last = (w, g, o)


def _data(cfg: Config, micro_batch: int, batches: int) -> DataLoader:
    x, y = family_of(cfg).example(cfg.model, micro_batch * batches, torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, y), batch_size=micro_batch, shuffle=False)


def _cpu_peak(prof: Any) -> int:
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.typed[0] == _EventType.Allocation:
            f = node.typed[1]
            events.append((node.start_time_ns, int(f.ptr), int(f.alloc_size)))
    # Replay this session's allocations and frees: the reporter's own running total is process-wide,
    # so blocks from an earlier session freed during this one would pull it down.
    live, peak, mine = 0, 0, {}
    for _, ptr, size in sorted(events):
        if size > 0:
            mine[ptr] = size
            live += size
            peak = max(peak, live)
        elif ptr in mine:
            live -= mine.pop(ptr)
    return peak


def measure(cfg: Config, precision: str = "32-true", micro_batch: int | None = None, steps: int = 3,
            peak: bool = True, accelerator: str | None = None) -> Measured:
    """Train ``steps`` steps of ``cfg``'s model at ``precision`` and measure model states and the peak."""
    cfg = copy.deepcopy(cfg)
    fam = family_of(cfg)
    if fam.plan_shape is not None:
        cfg.model = fam.plan_shape(cfg)[0]  # what the planner assumed (e.g. the vocabulary)
    mb = micro_batch or cfg.data.batch_size
    device = accelerator or ("cuda" if torch.cuda.is_available() else "cpu")
    counter = _StateBytes()
    loader = _data(cfg, mb, steps)

    def train() -> None:
        L.seed_everything(0, verbose=False)
        module = build_module(cfg, pretrained=False)  # bytes do not depend on the values: no download
        trainer = L.Trainer(max_steps=steps, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                            precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                            gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=[counter])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, train_dataloaders=loader)

    measured_peak, method = None, "not measured"
    if not peak:
        train()
    elif device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train()
        measured_peak, method = torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    else:
        import gc

        from torch.profiler import ProfilerActivity, profile

        gc.collect()  # garbage of an earlier run must not be freed inside this measurement
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            train()
        measured_peak, method = _cpu_peak(prof), "torch.profiler allocation events (replayed alloc/free)"
    w, g, o = counter.last
    return Measured(w + g + o, w, g, o, measured_peak, device, method)
