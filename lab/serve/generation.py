"""Text generation for the server with continuous batching: completions decode together, streamed piece by piece.

    batch = DecodeBatch(served)              # on the model's thread
    batch.add([job])                         # job = Completion(ids=tok.encode("ROMEO:"), max_tokens=50, ...,
    while batch:                             #                  emit=print): emit(text, None) ... emit("", "stop")
        ended = batch.step()                 # one token each; -> [(job, finish reason)] of jobs that ended

Rows are left-padded to the longest context and decoded by ``lab.models.gpt.Decoder`` (KV cache,
crop-and-recompute past ``block_size``, padding never attended to), so a row gives the same tokens
alone, in a batch, or joining one that already runs. Each row samples with its own settings and its own
seeded generator. A row ends at ``max_tokens``, at a stop sequence, or when its client has gone
(``cancelled``), and leaves the batch at once. A model that runs outside PyTorch (ONNX Runtime) has no
cache: each row recomputes its window of the last ``block_size`` tokens at every step.
``lab.serve.batching.Batcher`` feeds the server's requests into a ``DecodeBatch``.

Text is decoded incrementally, as vLLM's ``detokenize_incrementally`` does: each step decodes the tokens
since the last complete piece, with the piece before them as context, and waits while the text ends in
half a character (a BPE token may be one byte of several). So a step costs the same at token 500 as at
token 5, and the pieces join to what decoding all tokens at once gives. (Decoding all of a row's tokens
at every step made a long completion quadratic: at 512 tokens 44 us per row and step with the character
tokenizer, 79 us with a BPE one; 32 greedy 500-token completions of gpt-nano's shape with a 512 block
took 5.2-5.7 s that way against 4.6-4.9 s, alternated, on an Intel Xeon, 1 thread.) Text is held back
while it could still be the start of a stop sequence, so no stop text ever reaches the client.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lab.models.gpt import Decoder, pad_left, sample_next


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
    prefix: int = 0
    """``new_ids[prefix:read]`` decode to the last piece added to ``text``: the context the next decode starts from."""
    read: int = 0
    """``new_ids[:read]`` are in ``text``."""


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

    def join(self, other: RowDecoders) -> None:
        self.rows += other.rows

    def keep(self, rows: torch.Tensor) -> None:
        self.rows = [self.rows[i] for i in rows.tolist()]


def decoder_for(served: Any, rows: list[list[int]]) -> Any:
    """A Decoder over left-padded rows (a GPT module), or per-row window decoders (anything else)."""
    if served.module is not None:
        longest = max(map(len, rows))
        idx = torch.cat([pad_left(torch.tensor([r]), longest, 0) for r in rows])
        mask = torch.cat([pad_left(torch.ones(1, len(r), dtype=torch.bool), longest, False) for r in rows])
        return Decoder(served.module, idx, mask)
    return RowDecoders(served.forward, rows, served.block_size)


def _advance(job: Completion, decode: Callable[[list[int]], str]) -> None:
    """Add the row's newest token to its text, end it at a stop sequence, emit what can no longer turn into one."""
    ids, last = job.new_ids, len(job.new_ids) >= job.max_tokens
    before, now = decode(ids[job.prefix:job.read]), decode(ids[job.prefix:])
    # A text ending in U+FFFD holds half a character: wait for the token(s) with the rest (unless it is the last).
    if len(now) > len(before) and (last or not now.endswith("\ufffd")):
        start = max(0, len(job.text) - max((len(s) for s in job.stop), default=1) + 1)
        job.text += now[len(before):]
        job.prefix, job.read = job.read, len(ids)
        hits = [i for i in (job.text.find(s, start) for s in job.stop) if i >= 0]  # only the new text can hold one
        if hits:
            job.text, job.finish = job.text[:min(hits)], "stop"
    if job.finish is None and last:
        job.finish = "length"
    safe = len(job.text)
    if job.finish is None:
        for s in job.stop:  # hold back a tail that could begin a stop sequence
            for n in range(min(len(s) - 1, len(job.text)), 0, -1):
                if job.text.endswith(s[:n]):
                    safe = min(safe, len(job.text) - n)
                    break
    if safe > job.sent:
        job.emit(job.text[job.sent:safe], None)
        job.sent = safe


class DecodeBatch:
    """The completions decoding together: ``add`` prefills new ones into the batch, ``step`` samples a token for each.

    Continuous batching: completions join between steps and leave at the step they end, so a long one never
    holds a short one back. ``on_tokens(n, seconds)`` hears the tokens made, about once a second.
    """

    def __init__(self, served: Any, on_tokens: Callable[[int, float], None] | None = None) -> None:
        self.served, self.on_tokens = served, on_tokens
        self.jobs: list[Completion] = []
        self.gens: list[torch.Generator] = []
        self.dec: Any = None
        self.made, self.since = 0, time.perf_counter()

    def __len__(self) -> int:
        return len(self.jobs)

    @torch.inference_mode()
    def add(self, jobs: list[Completion]) -> None:
        """Run the new prompts (together) and append their rows to the batch."""
        if not jobs:
            return
        for job in jobs:
            g = torch.Generator()
            g.manual_seed(job.seed) if job.seed is not None else g.seed()
            self.gens.append(g)
        new = decoder_for(self.served, [j.ids for j in jobs])
        if self.dec is None:
            self.dec, self.made, self.since = new, 0, time.perf_counter()
        else:
            self.dec.join(new)
        self.jobs += jobs

    @torch.inference_mode()
    def step(self) -> list[tuple[Completion, str]]:
        """One token for every row; -> ``(job, finish reason)`` for each that ended (length, stop, cancelled)."""
        logits, decode = self.dec.logits, self.served.tokenizer.decode
        nxt = logits.argmax(-1)  # every greedy row's token in one call; the sampled rows' are replaced below
        for i, job in enumerate(self.jobs):
            if job.cancelled.is_set():
                job.finish = "cancelled"
                continue
            if job.temperature != 0:
                nxt[i] = sample_next(logits[i:i + 1], job.temperature, job.top_k, job.top_p, self.gens[i])[0]
            job.new_ids.append(int(nxt[i]))
            self.made += 1
            _advance(job, decode)
        keep = [i for i, j in enumerate(self.jobs) if j.finish is None]
        ended = [j for j in self.jobs if j.finish is not None]
        for job in ended:
            if job.finish != "cancelled":
                job.emit("", job.finish)
        if len(keep) < len(self.jobs):
            self.jobs, self.gens = [self.jobs[i] for i in keep], [self.gens[i] for i in keep]
            if keep:
                self.dec.keep(torch.tensor(keep))
            else:
                self.dec = None
        if self.dec is not None:
            self.dec.push(nxt[keep])
        seconds = time.perf_counter() - self.since
        if self.on_tokens is not None and (seconds >= 1.0 or self.dec is None):
            self.on_tokens(self.made, seconds)
            self.made, self.since = 0, time.perf_counter()
        return [(job, job.finish) for job in ended]


def run_completions(served: Any, jobs: list[Completion], on_tokens: Callable[[int, float], None] | None = None) -> None:
    """Generate every job's completion together, to the end of the last (a warm-up, a test)."""
    batch = DecodeBatch(served, on_tokens)
    batch.add(jobs)
    while batch:
        batch.step()
