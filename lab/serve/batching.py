"""Dynamic batching: requests that arrive close together run as one batch on the model's thread.

``Batcher`` runs a batch in one call (a prediction); ``ContinuousBatcher`` steps a batch that requests
join and leave between steps (generation, see its docstring).

    batcher = Batcher(run_batch, max_size=8, max_wait_s=0.005, max_queue=256, executor=pool)
    batcher.start()                       # inside the server's event loop
    result = await batcher.submit(item)   # this item's entry of run_batch([..., item, ...])

The first request of a batch waits at most ``max_wait_s`` for others (a lone request pays that once);
a full batch runs at once. ``run_batch`` runs on ``executor`` -- one thread shared by every batcher of a
server, so the model never runs twice at the same time and the event loop keeps answering (/health,
/metrics, streams) while it works. A batch that raises fails its own requests only; the loop goes on.
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


class Batcher(Generic[T]):
    """Collects submitted items into batches for ``run_batch(items) -> results`` (one result per item)."""

    def __init__(self, run_batch: Callable[[list[T]], list[Any]], max_size: int, max_wait_s: float, max_queue: int,
                 executor: Executor, on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.run_batch, self.max_size, self.max_wait_s, self.max_queue = run_batch, max_size, max_wait_s, max_queue
        self.executor, self.on_batch, self.on_depth = executor, on_batch, on_depth
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not those running)."""
        return 0 if self._queue is None else self._queue.qsize()

    def start(self) -> None:
        """Start collecting, in the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, item: T) -> Any:
        """Queue ``item`` and wait for its result (QueueFull when too many wait)."""
        assert self._queue is not None, "Batcher.start() first"
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are waiting already (max_queue {self.max_queue})")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        self._depth()
        return await future

    def _depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    async def _collect(self) -> list[tuple[T, asyncio.Future[Any]]]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_size:
            left = deadline - loop.time()
            try:
                batch.append(self._queue.get_nowait() if left <= 0 else
                             await asyncio.wait_for(self._queue.get(), left))
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
        self._depth()
        # A request whose caller went away while it waited (a closed connection) is not run.
        return [(item, fut) for item, fut in batch if not fut.done()]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in batch])
            except Exception as e:  # this batch's requests fail; the server goes on
                for _, fut in batch:
                    _settle(fut, None, e)
                continue
            for (_, fut), result in zip(batch, results):
                _settle(fut, result)


class Stepped(Protocol[T]):
    """What ``ContinuousBatcher`` runs: a batch that items join, stepped until each of them ends."""

    def add(self, items: list[T]) -> None: ...

    def step(self) -> list[T]:
        """Advance every item one step; -> the items that ended at it."""
        ...


class ContinuousBatcher(Generic[T]):
    """Iteration-level (continuous) batching: requests join a running batch between steps, leave as each ends.

        batcher = ContinuousBatcher(lambda: DecodeBatch(served), max_size=32, max_wait_s=0.005, max_queue=256,
                                    executor=pool)
        batcher.start()                       # inside the server's event loop
        await batcher.submit(job)             # returns once the job has ended (its output went out meanwhile)

    An idle batcher waits up to ``max_wait_s`` after a first request for others, as ``Batcher`` does. Then
    one call on the model's thread steps the batch for as long as it has work: between steps it takes in
    waiting requests (up to ``max_size`` rows) and lets ended ones go, so a request that arrives
    mid-generation starts at the next step instead of after the whole batch. The loop lives on the model's
    thread, not the event loop, so a busy event loop (many clients) never leaves the model waiting between
    steps. ``on_batch`` hears the rows of every step. A step that raises fails the requests in the batch;
    the loop goes on with a new batch.
    """

    def __init__(self, new_batch: Callable[[], Stepped[T]], max_size: int, max_wait_s: float, max_queue: int,
                 executor: Executor, on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.new_batch, self.max_size, self.max_wait_s, self.max_queue = new_batch, max_size, max_wait_s, max_queue
        self.executor, self.on_batch, self.on_depth = executor, on_batch, on_depth
        self._waiting: deque[tuple[T, asyncio.Future[Any]]] = deque()
        self._lock = threading.Lock()  # guards _waiting and _busy between the event loop and the model's thread
        self._busy = False
        self._full = asyncio.Event()
        self._stopped = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def depth(self) -> int:
        """Requests waiting to join (not those running)."""
        return len(self._waiting)

    def start(self) -> None:
        """Start taking requests, in the running event loop."""
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self._stopped = True  # the model's thread leaves its loop after the current step

    async def submit(self, item: T) -> Any:
        """Queue ``item`` and wait until it has ended (QueueFull when too many wait)."""
        assert self._loop is not None, "ContinuousBatcher.start() first"
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
        try:  # give the requests that arrive together a moment to start together
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
        """The model's thread: step the batch until nothing runs and nothing waits."""
        loop = self._loop
        assert loop is not None
        rows, running = self.new_batch(), {}
        while not self._stopped:
            with self._lock:
                joining = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.max_size - len(running)))]
                if not joining and not running:
                    self._busy = False
                    return
            self._depth()
            # A request whose caller went away while it waited (a closed connection) is not run.
            joining = [(item, fut) for item, fut in joining if not fut.done()]
            running.update({id(item): (item, fut) for item, fut in joining})
            if self.on_batch is not None and running:
                self.on_batch(len(running))
            try:
                rows.add([item for item, _ in joining])
                ended = rows.step() if running else []
            except Exception as e:  # the batch's requests fail; the server goes on with a new batch
                for _, fut in running.values():
                    loop.call_soon_threadsafe(_settle, fut, None, e)
                rows, running = self.new_batch(), {}
                continue
            for item in ended:
                _, fut = running.pop(id(item))
                loop.call_soon_threadsafe(_settle, fut, None)


def _settle(fut: asyncio.Future[Any], result: Any, error: Exception | None = None) -> None:
    """Give ``fut`` its result or error unless it is done already (its caller went away)."""
    if not fut.done():
        fut.set_result(result) if error is None else fut.set_exception(error)
