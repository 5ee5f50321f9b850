"""Dynamic batching: requests that arrive close together run as one batch on the model's thread.

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
from concurrent.futures import Executor
from typing import Any, Callable, Generic, TypeVar

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
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
