"""The worker's Kafka transport: the one module that relies on private APIs of Faust and aiokafka.

Two gains measured on the pipeline ceiling (bench/README.md) need code that neither library
offers an extension point for, and both live here, nowhere else:

1. **A lighter delivery loop.** Faust hands each fetched message to the conductor through a
   helper that races the delivery against "flow suspended", "service stopped" and "service
   crashed" by creating a task for each of the four: per message, that bookkeeping costs
   more than everything the worker does with the message. :class:`Consumer` overrides
   Faust's private ``_drain_messages`` so a message is delivered with a plain ``await``
   while the flow is running, keeping the racing path for the moment a rebalance or stop
   suspends it. Offsets, gaps and commits are handled exactly as Faust expects.
2. **The fetch wait.** Faust fixes aiokafka's fetch wait at 1.5 s, which a broker that
   holds every fetch for the full wait (the embedded one) adds to every post's latency;
   and the wait should follow the model (see :mod:`worker.pacing`). aiokafka reads it from
   a private attribute as it builds each fetch request: :func:`pace_fetcher` sets that
   attribute from the pacer just before each build.

Both were written against the versions in :data:`PINNED` (pyproject.toml pins them too),
and :data:`RELIED_ON` holds a digest of the source of every private function they depend
on or replace. :func:`private_api_changes` compares the installed libraries with both: a
unit test fails loudly on an upgrade that changes them, and at run time the worker falls
back to Faust's own transport (slower, still correct) and says why in its log.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
from collections.abc import AsyncIterator
from typing import Any

import faust
import structlog
from aiokafka.consumer.fetcher import Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from worker.pacing import FetchPacer

log = structlog.get_logger(__name__)

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
"""The versions this module was written and tested against."""

RELIED_ON = {
    # Replaced by Consumer._drain_messages below.
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e83c63",
    # Extended by ConsumerThread below (the fetch wait is set on what it returns).
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": "c2701bfc3e6f6cad",
    # Replaced by EmotionApp._new_transport below.
    "faust.app.base:App._new_transport": "42db531312dd776f",
    # Reads self._fetch_max_wait_ms into every FetchRequest (what pace_fetcher relies on).
    "aiokafka.consumer.fetcher:Fetcher._get_actions_per_node": "1dab2cf937d165d0",
}
"""Private functions this module depends on, and the first 16 hex digits of the SHA-256 of
their source in the :data:`PINNED` versions."""

_YIELD_EVERY = 100  # let other tasks run at least this often during a large fetch


def source_digest(qualified: str) -> str:
    """The digest :data:`RELIED_ON` records for ``module:Class.function``, as installed now."""
    module_name, _, path = qualified.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in path.split("."):
        target = getattr(target, part)
    return hashlib.sha256(inspect.getsource(target).encode("utf-8")).hexdigest()[:16]


@functools.cache
def private_api_changes() -> tuple[str, ...]:
    """How the installed Faust and aiokafka differ from what this module was written for (empty: no way)."""
    changes = []
    for distribution, version in PINNED.items():
        installed = importlib.metadata.version(distribution)
        if installed != version:
            changes.append(
                f"{distribution} {installed} is installed, this module was written against {version}"
            )
    for qualified, digest in RELIED_ON.items():
        try:
            found = source_digest(qualified)
        except (AttributeError, ImportError, OSError, TypeError) as exc:
            changes.append(f"{qualified} is gone ({exc!r})")
            continue
        if found != digest:
            changes.append(f"{qualified} has changed (source digest {found}, expected {digest})")
    return tuple(changes)


def pace_fetcher(fetcher: Fetcher, pacer: FetchPacer) -> None:
    """Make ``fetcher`` ask ``pacer`` for the wait of each fetch request it builds."""
    build = fetcher._get_actions_per_node

    def paced(assignment: Any) -> Any:
        fetcher._fetch_max_wait_ms = pacer.wait_ms()
        return build(assignment)

    fetcher._get_actions_per_node = paced  # type: ignore[method-assign]


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Kafka answers a fetch as soon as data arrives, so Faust's fixed 1.5 s costs nothing
        # there; a broker that holds every fetch for the full wait would add it to every post.
        wait = getattr(self.consumer.app, "fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = wait
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        pacer = getattr(self.consumer.app, "fetch_pacer", None)
        fetcher = getattr(self._consumer, "_fetcher", None)
        if pacer is not None and isinstance(fetcher, Fetcher):  # aiokafka builds its fetcher inside start()
            pace_fetcher(fetcher, pacer)


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(faust.transport.consumer.CONSUMER_FETCHING)
                batch: AsyncIterator[tuple[TP, Message]] = self.getmany(timeout=1.0)
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

    async def _deliver_all(self, batch: AsyncIterator[tuple[TP, Message]]) -> None:
        delivered = 0
        async for tp, message in batch:
            delivered += 1
            if delivered % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            last = self._read_offset[tp]
            if last is not None and message.offset < last:
                continue  # read before a seek moved the position back: already handed on
            if (
                last is not None
                and message.offset - last > 1
                and self.app.topics.acks_enabled_for(message.topic)
            ):
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
    """A Faust app whose Kafka consumer uses the lighter delivery loop and the fetch wait above,
    when the installed libraries are the ones they were written for."""

    fetch_max_wait_ms: int | None = None
    """Longest a fetch may wait at the broker for data; None keeps Faust's choice."""

    fetch_pacer: FetchPacer | None = None
    """Stretches the fetch wait while the model is busy (brokers that hold fetches)."""

    def _new_transport(self) -> Any:
        changes = private_api_changes()
        if changes:
            log.warning(
                "Faust's own Kafka transport in use: the libraries differ from those the worker's transport "
                "was written for (slower, and fetches wait 1.5 s on brokers that hold them)",
                changes=list(changes),
            )
            return super()._new_transport()
        return Transport(self.conf.broker_consumer, self)
