"""Batched text generation for the server: several completions decoded together, streamed piece by piece.

    job = Completion(ids=tok.encode("ROMEO:"), max_tokens=50, temperature=0.8, top_k=None, top_p=1.0,
                     seed=0, stop=["\n\n"], emit=print)
    run_completions(served, [job, other])     # on the model's thread; emit(text, None) ... emit("", "stop")

Rows are left-padded to the longest prompt and decoded by ``lab.models.gpt.Decoder`` (KV cache,
crop-and-recompute past ``block_size``, padding never attended to), so a row gives the same tokens
alone or in a batch. Each row samples with its own settings and its own seeded generator. A row ends
at ``max_tokens``, at a stop sequence, or when its client has gone (``cancelled``); the batch ends
when every row has. A model that runs outside PyTorch (ONNX Runtime) has no cache: each row
recomputes its window of the last ``block_size`` tokens at every step.

Text is decoded from all of a row's new tokens at once (a BPE token may be half a character) and held
back while it could still be the start of a stop sequence, so no stop text ever reaches the client.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lab.models.gpt import Decoder, sample_next


@dataclass
class Completion:
    """One request's generation."""

    ids: list[int]
    """The prompt's token ids (not empty)."""
    max_tokens: int
    """Tokens to generate at most."""
    temperature: float
    """0 = always the likeliest token; otherwise logits are divided by it."""
    top_k: int | None
    """Sample among the k likeliest tokens only (None = all)."""
    top_p: float
    """Sample among the likeliest tokens whose probabilities reach p (1 = all)."""
    seed: int | None
    """Seed of this row's generator (None = a fresh random one)."""
    stop: list[str]
    """Text that ends the completion (not included in it)."""
    emit: Callable[[str, str | None], None]
    """Called on the model's thread with each new piece of text, then once with the finish reason."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the client is gone: the row stops at the next step."""
    text: str = ""
    """The completion so far (what was emitted plus what is held back)."""
    sent: int = 0
    """Characters of ``text`` already emitted."""
    new_ids: list[int] = field(default_factory=list)
    finish: str | None = None


class WindowDecoder:
    """``Decoder``'s interface for a batch forward function without a cache (ONNX Runtime): rows of equal length."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], idx: torch.Tensor, block_size: int) -> None:
        self.forward, self.idx, self.block_size = forward, idx, block_size
        self.logits = self._run()

    def _run(self) -> torch.Tensor:
        return self.forward(self.idx[:, -self.block_size:])[:, -1, :]

    def push(self, next_ids: torch.Tensor) -> None:
        self.idx = torch.cat((self.idx, next_ids.view(-1, 1).to(self.idx.dtype)), dim=1)
        self.logits = self._run()


class RowDecoders:
    """Rows of different lengths without padding support: one ``WindowDecoder`` per row, stepped together."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], rows: list[list[int]], block_size: int) -> None:
        self.rows = [WindowDecoder(forward, torch.tensor([r], dtype=torch.long), block_size) for r in rows]

    @property
    def logits(self) -> torch.Tensor:
        return torch.cat([r.logits for r in self.rows])

    def push(self, next_ids: torch.Tensor) -> None:
        for row, nxt in zip(self.rows, next_ids):
            row.push(nxt.view(1))


def decoder_for(served: Any, rows: list[list[int]]) -> Any:
    """A Decoder over left-padded rows (a GPT module), or per-row window decoders (anything else)."""
    if served.module is not None:
        longest = max(map(len, rows))
        idx = torch.zeros(len(rows), longest, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.bool)
        for i, r in enumerate(rows):
            idx[i, longest - len(r):] = torch.tensor(r)
            mask[i, longest - len(r):] = True
        return Decoder(served.module, idx, mask)
    return RowDecoders(served.forward, rows, served.block_size)


def _advance(job: Completion, decode: Callable[[list[int]], str]) -> None:
    """Decode the row's new tokens, end it at a stop sequence, emit what can no longer turn into one."""
    text = decode(job.new_ids)
    hits = [i for i in (text.find(s) for s in job.stop) if i >= 0]
    if hits:
        job.text, job.finish = text[:min(hits)], "stop"
    else:
        job.text = text
        if len(job.new_ids) >= job.max_tokens:
            job.finish = "length"
    safe = len(job.text)
    if job.finish is None:
        # Hold back a tail that could begin a stop sequence, and a half-decoded character (U+FFFD).
        for s in job.stop:
            for n in range(min(len(s) - 1, len(job.text)), 0, -1):
                if job.text.endswith(s[:n]):
                    safe = min(safe, len(job.text) - n)
                    break
        while safe > job.sent and job.text[safe - 1] == "\ufffd":
            safe -= 1
    if safe > job.sent:
        job.emit(job.text[job.sent:safe], None)
        job.sent = safe


@torch.inference_mode()
def run_completions(served: Any, jobs: list[Completion], on_tokens: Callable[[int, float], None] | None = None) -> list[None]:
    """Generate every job's completion together (see the module docstring); -> one None per job."""
    decode = served.tokenizer.decode
    gens = []
    for job in jobs:
        g = torch.Generator()
        g.manual_seed(job.seed) if job.seed is not None else g.seed()
        gens.append(g)
    start, made = time.perf_counter(), 0
    dec = decoder_for(served, [j.ids for j in jobs])
    while True:
        for job in jobs:
            if job.finish is None and job.cancelled.is_set():
                job.finish = "cancelled"
        live = [i for i, j in enumerate(jobs) if j.finish is None]
        if not live:
            break
        logits = dec.logits
        nxt = torch.zeros(len(jobs), dtype=torch.long)  # finished rows step on a dummy token, never read
        for i in live:
            j = jobs[i]
            nxt[i] = sample_next(logits[i:i + 1], j.temperature, j.top_k, j.top_p, gens[i])[0]
            j.new_ids.append(int(nxt[i]))
            made += 1
            _advance(j, decode)
        if any(j.finish is None for j in jobs):
            dec.push(nxt)
    for job in jobs:
        if job.finish != "cancelled":
            job.emit("", job.finish)
    if on_tokens is not None:
        on_tokens(made, time.perf_counter() - start)
    return [None] * len(jobs)
