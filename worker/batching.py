"""The micro-batcher: gathers items from an async source into batches.

A batch is released when it holds ``max_size`` items, or ``max_wait`` seconds after its
first item arrived, whichever comes first; an idle source releases nothing. Reading the
source runs in a task of its own that fills a bounded queue, so the next batch gathers
while the current one is being processed (and a slow consumer holds the source back).
The wait counts from the first item's arrival, not from when the reader asks: items that
queued up while the previous batch was processed have waited already, so under load a
batch leaves as soon as the reader is free. Given ``born`` (an item's creation time, Unix
seconds: for a Kafka record, its timestamp), an item arrives that much earlier, at most
``max_wait``: the time it spent reaching the worker (the producer's linger, the broker, a
fetch held while the model was busy) counts as waiting too. Clocks that disagree cost
nothing worse than a batch released at once, or after the whole wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class ByteBudget:
    """Bytes in flight, bounded: :meth:`acquire` waits while taking more would pass the limit
    (one item alone may always pass, or an item larger than the limit would wait for ever)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.used = 0
        self.items = 0
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size
            self.items += 1

    async def release(self, size: int, items: int = 1) -> None:
        async with self._changed:
            self.used -= size
            self.items -= items
            self._changed.notify_all()


class MicroBatcher(Generic[T]):
    """Async iterator of lists of at most ``max_size`` items from ``source``."""

    def __init__(
        self,
        source: AsyncIterable[T],
        max_size: int,
        max_wait: float,
        born: Callable[[T], float | None] | None = None,
        budget: ByteBudget | None = None,
        size: Callable[[T], int] | None = None,
    ) -> None:
        """``budget``, with ``size``: the bytes of every item are taken from it before the item
        is read into the queue (the caller gives them back when it is done with the item), so
        a backlog of large messages is held back at the source."""
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if max_wait < 0:
            raise ValueError("max_wait must not be negative")
        self._source = source
        self.max_size = max_size
        self.max_wait = max_wait
        self._born = born
        self._budget, self._size = budget, size
        # Room for one batch in progress and one gathering: enough to keep the model fed,
        # little enough that few unprocessed messages are held in memory.
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=2 * max_size)
        self._pump: asyncio.Task | None = None
        self._error: BaseException | None = None
        self._ended = False

    async def _fill(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            async for item in self._source:
                if self._budget is not None and self._size is not None:
                    await self._budget.acquire(self._size(item))
                await self._queue.put((loop.time() - self._age(item), item))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced to the reader, never swallowed
            self._error = exc
        await self._queue.put((0.0, _END))

    def _age(self, item: T) -> float:
        """How long ``item`` has waited already, from 0 to ``max_wait`` seconds."""
        born = self._born(item) if self._born is not None else None
        if not born or born <= 0:  # no timestamp (Kafka's is -1 then)
            return 0.0
        return min(max(time.time() - born, 0.0), self.max_wait)

    def __aiter__(self) -> AsyncIterator[list[T]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[T]]:
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._fill())
        try:
            while not self._ended:
                batch = await self._next_batch()
                if batch:
                    yield batch
            if self._error is not None:
                raise self._error
        finally:
            await self.aclose()

    async def _next_batch(self) -> list[T]:
        arrived, first = await self._queue.get()
        if first is _END:
            self._ended = True
            return []
        batch: list[T] = [first]
        loop = asyncio.get_running_loop()
        deadline = arrived + self.max_wait
        while len(batch) < self.max_size:
            try:
                _, item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    _, item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if item is _END:
                self._ended = True
                break
            batch.append(item)
        return batch

    def waiting(self) -> int:
        """Items already gathered behind the batch last taken."""
        return self._queue.qsize()

    def full_batch_waiting(self) -> bool:
        """Whether a whole batch is already queued, so the next one can be taken at once."""
        return self.waiting() >= self.max_size

    async def aclose(self) -> None:
        """Stop reading the source."""
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
