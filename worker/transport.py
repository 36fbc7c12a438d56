"""The worker's Kafka transport: Faust's aiokafka driver with a lighter per-message loop.

Faust hands each fetched message to the conductor through a helper that races the
delivery against "flow suspended", "service stopped" and "service crashed" by creating a
task for each of the four and waiting on them: per message, that bookkeeping costs more
than everything the worker does with the message (bench/ measures the difference). Here
a message is delivered with a plain ``await`` while the flow is running, and the racing
path is kept for the moment a rebalance or stop suspends it. Offsets, gaps and commits
are handled exactly as Faust expects.

The fetch wait comes from the broker profile. A broker that holds every fetch for the full
wait (the embedded one) needs a short wait for low latency, but an idle consumer then
polls it a hundred times a second, which costs CPU the model needs: a :class:`FetchPacer`
stretches the wait while the model is busy with a batch (whatever arrives meanwhile
cannot be processed before the model is free anyway) and shortens it again when not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Optional, Tuple

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from aiokafka.consumer.fetcher import Fetcher
from faust.types import TP, Message

_YIELD_EVERY = 100  # let other tasks run at least this often during a large fetch


class FetchPacer:
    """The fetch wait to ask for now: the floor, or up to the time the model is still busy.

    The agent calls :meth:`busy_for` when a batch goes into the model and :meth:`idle` when
    it comes out; the consumer's fetcher reads :meth:`wait_ms` as it builds each request
    (from its own thread: a float read and write, no lock needed). A fetch issued while the
    model is busy returns when the model is expected to be free, so posts arriving
    meanwhile are not delayed, and the broker is asked a few times per batch, not every
    ``floor_ms``.
    """

    def __init__(self, floor_ms: int, ceiling_ms: int) -> None:
        if not 0 < floor_ms <= ceiling_ms:
            raise ValueError("fetch waits need 0 < floor_ms <= ceiling_ms")
        self.floor_ms, self.ceiling_ms = floor_ms, ceiling_ms
        self._busy_until = 0.0

    def busy_for(self, seconds: float) -> None:
        self._busy_until = time.monotonic() + seconds

    def idle(self) -> None:
        self._busy_until = 0.0

    def wait_ms(self) -> int:
        remaining_ms = (self._busy_until - time.monotonic()) * 1000
        return int(min(self.ceiling_ms, max(self.floor_ms, remaining_ms)))


class _PacedFetcher(Fetcher):
    """aiokafka's fetcher, asking a :class:`FetchPacer` for the wait of each fetch request."""

    _pacer: FetchPacer

    @property  # type: ignore[override]
    def _fetch_max_wait_ms(self) -> int:
        return self._pacer.wait_ms()

    @_fetch_max_wait_ms.setter
    def _fetch_max_wait_ms(self, value: int) -> None:
        pass  # set once by Fetcher.__init__; the pacer decides from then on


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the fetch wait at 1.5 s. Kafka answers a fetch as soon as data arrives,
        # so that costs nothing there; a broker that holds every fetch for the full wait
        # (the embedded one does) would add it to every post's latency.
        wait = getattr(self.consumer.app, "fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = wait
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        pacer = getattr(self.consumer.app, "fetch_pacer", None)
        fetcher = getattr(self._consumer, "_fetcher", None)
        if pacer is not None and type(fetcher) is Fetcher:
            # aiokafka builds its fetcher inside start(); the subclass only changes where
            # the fetch wait is read from.
            fetcher._pacer = pacer
            fetcher.__class__ = _PacedFetcher


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)
    async def _drain_messages(self, fetcher: Any) -> None:
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(faust.transport.consumer.CONSUMER_FETCHING)
                batch: AsyncIterator[Tuple[TP, Message]] = self.getmany(timeout=1.0)
                await asyncio.sleep(0)  # getmany can return at once, repeatedly
                if not self.should_stop:
                    await self._deliver_all(batch)
                self.diag.unset_flag(faust.transport.consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            self.log.info("broker stopped the consumer while the worker is stopping")
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
        finally:
            self.diag.unset_flag(faust.transport.consumer.CONSUMER_FETCHING)

    async def _deliver_all(self, batch: AsyncIterator[Tuple[TP, Message]]) -> None:
        delivered = 0
        async for tp, message in batch:
            delivered += 1
            if delivered % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            last = self._read_offset[tp]
            if last is not None and message.offset < last:
                continue  # read before a seek moved the position back: already handed on
            if last is not None and message.offset - last > 1 and self.app.topics.acks_enabled_for(message.topic):
                # Offsets the broker never returns (transaction markers, compaction) must
                # still count as done, or the committed offset would stop below them.
                await self._add_gap(tp, last + 1, message.offset)
            if self._commit_every is not None and self._n_acked >= self._commit_every:
                self._n_acked = 0
                await self.commit()
            if self.suspend_flow.is_set():
                await self.wait_first(self.callback(message), self.suspend_flow.wait())
            else:
                await self.callback(message)
            self._read_offset[tp] = message.offset


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class EmotionApp(faust.App):
    """A Faust app whose Kafka consumer uses the lighter delivery loop above."""

    fetch_max_wait_ms: Optional[int] = None
    """Longest a fetch may wait at the broker for data; None keeps Faust's choice."""

    fetch_pacer: Optional[FetchPacer] = None
    """Stretches the fetch wait while the model is busy (brokers that hold fetches)."""

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)
