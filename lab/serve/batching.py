"""Dynamic batching on the model's thread: predictions run in batches, completions join a running batch.

    batcher = Batcher(lambda: OneShot(run_batch), max_size=8, max_wait_s=0.005, max_queue=256, executor=pool)
    batcher.start()                       # inside the server's event loop
    result = await batcher.submit(item)   # this item's entry of run_batch([..., item, ...])

    batcher = Batcher(lambda: DecodeBatch(served), max_size=32, ...)   # generation (lab.serve.generation)
    reason = await batcher.submit(job)    # once the job has ended; its text went out meanwhile

A batch is anything ``Stepped``: items are added, and each ``step`` ends some of them with a result. A
prediction ends at its first step (``OneShot``); a completion after many (continuous batching: new
completions join between steps, each leaves at its own last token, a long one never holds a short one).

An idle batcher waits up to ``max_wait_s`` after a first request for others (a lone request pays that
once; a full batch starts at once). Then one call on ``executor`` -- the one thread shared by every
batcher of a server, so the model never runs twice at the same time -- steps batches for as long as
requests run or wait, taking in up to ``max_size`` waiting ones before a step (into a running batch only
every ``join_every`` steps, or when they fill it: each joining is a prefill pass). The loop lives on the
model's thread, not the event loop: however busy the event loop is with clients, the model never waits
on it between steps, and the loop keeps answering /health, /metrics and streams while the model works.
A step that raises fails the requests in its batch only; the next step starts a new batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Executor
from typing import Any, Callable, Generic, Protocol, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """More requests wait than ``max_queue``: the caller answers 503 rather than queueing without bound."""


class Stepped(Protocol[T]):
    """A batch the ``Batcher`` steps: items join it, and each step ends some of them."""

    def add(self, items: list[T]) -> None: ...

    def step(self) -> list[tuple[T, Any]]:
        """Advance every item one step; -> ``(item, result)`` for each item that ended at it."""
        ...


class OneShot(Generic[T]):
    """A batch whose items all end at the first step: ``run_batch(items) -> one result per item`` (a prediction)."""

    def __init__(self, run_batch: Callable[[list[T]], list[Any]]) -> None:
        self.run_batch, self.items = run_batch, []

    def add(self, items: list[T]) -> None:
        self.items += items

    def step(self) -> list[tuple[T, Any]]:
        items, self.items = self.items, []
        return list(zip(items, self.run_batch(items)))


class Batcher(Generic[T]):
    """Feeds submitted items into ``new_batch()`` batches on the model's thread (see the module docstring)."""

    def __init__(self, new_batch: Callable[[], Stepped[T]], max_size: int, max_wait_s: float, max_queue: int,
                 executor: Executor, on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None, join_every: int = 1) -> None:
        self.new_batch, self.max_size, self.max_wait_s, self.max_queue = new_batch, max_size, max_wait_s, max_queue
        self.join_every = join_every
        self.executor, self.on_batch, self.on_depth = executor, on_batch, on_depth
        self._waiting: deque[tuple[T, asyncio.Future[Any]]] = deque()
        self._lock = threading.Lock()  # guards _waiting and _busy between the event loop and the model's thread
        self._busy = False
        self._full = asyncio.Event()
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not those running)."""
        return len(self._waiting)

    def start(self) -> None:
        """Start taking requests, in the running event loop."""
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self._stopped = True  # the model's thread leaves its loop after the current step

    async def submit(self, item: T) -> Any:
        """Queue ``item`` and wait for its result (QueueFull when too many wait)."""
        assert self._loop is not None, "Batcher.start() first"
        if len(self._waiting) >= self.max_queue:
            raise QueueFull(f"{len(self._waiting)} requests are waiting already (max_queue {self.max_queue})")
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            self._waiting.append((item, future))
            idle, self._busy = not self._busy, True
        self._depth()
        if idle:
            self._full.clear()
            self._loop.create_task(self._begin())
        if len(self._waiting) >= self.max_size:
            self._full.set()
        return await future

    def _depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    async def _begin(self) -> None:
        try:  # give requests that arrive together a moment to start together
            await asyncio.wait_for(self._full.wait(), self.max_wait_s)
        except asyncio.TimeoutError:
            pass
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self._work)
        except BaseException:  # _work says it is idle when it ends; if it died, the next request starts anew
            with self._lock:
                self._busy = False
            raise

    def _work(self) -> None:
        """The model's thread: step batches until nothing runs and nothing waits."""
        loop = self._loop
        assert loop is not None
        batch, running, since = self.new_batch(), [], 0
        while not self._stopped:
            with self._lock:
                free = self.max_size - len(running)
                # Newcomers join an empty batch, a batch they fill, or every ``join_every`` steps: each joining
                # costs a prefill pass of its own, so they come in groups (text-generation-inference's
                # max_waiting_tokens does the same).
                take = min(len(self._waiting), free) if not running or len(self._waiting) >= free or \
                    since + 1 >= self.join_every else 0
                joining = [self._waiting.popleft() for _ in range(take)]
                if not joining and not running:
                    self._busy = False
                    return
            since = 0 if joining else since + 1
            self._depth()
            # A request whose caller went away while it waited (a closed connection) is not run.
            joining = [(item, fut) for item, fut in joining if not fut.done()]
            running += joining
            if not running:
                continue
            if self.on_batch is not None:
                self.on_batch(len(running))
            try:
                batch.add([item for item, _ in joining])
                ended = batch.step()
            except Exception as e:  # this batch's requests fail; the server goes on with a new batch
                for _, fut in running:
                    loop.call_soon_threadsafe(_settle, fut, None, e)
                batch, running = self.new_batch(), []
                continue
            for item, result in ended:
                _, fut = running.pop(next(i for i, (it, _) in enumerate(running) if it is item))
                loop.call_soon_threadsafe(_settle, fut, result)


def _settle(fut: asyncio.Future[Any], result: Any, error: Exception | None = None) -> None:
    """Give ``fut`` its result or error unless it is done already (its caller went away)."""
    if not fut.done():
        fut.set_result(result) if error is None else fut.set_exception(error)
