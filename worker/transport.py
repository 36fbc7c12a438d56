"""The worker's Kafka transport: the one module that relies on private APIs of Faust and aiokafka.

Two gains measured on the pipeline ceiling (bench/README.md) and one fix need code that neither
library offers an extension point for, and all three live here, nowhere else:

1. **A lighter delivery loop.** Faust hands each fetched message to the conductor through a
   helper that races the delivery against "flow suspended", "service stopped" and "service
   crashed" by creating a task for each of the four: per message, that bookkeeping costs
   more than everything the worker does with the message. :class:`Consumer` overrides
   Faust's private ``_drain_messages`` so a message is delivered with a plain ``await``
   while the flow is running, keeping the racing path for the moment a rebalance or stop
   suspends it. Offsets, gaps and commits are handled exactly as Faust expects.
2. **Records fetched across a rebalance.** Faust's fetch loop checks the consumer generation
   only after its fetch returns, so records fetched before a rebalance reach the worker after
   the rebalance's seek to the committed offset; Faust then counts the jump from that offset to
   them as a gap, done, and commits the posts in between unread. The delivery loop hands on
   only records the client's fetch position has moved past (:func:`fetched_since_last_seek`);
   the others are read again from the new position.
3. **The fetch wait.** Faust fixes aiokafka's fetch wait at 1.5 s, which a broker that
   holds every fetch for the full wait (the embedded one) adds to every post's latency;
   and the wait should follow the model (see :mod:`worker.pacing`). aiokafka reads it from
   a private attribute as it builds each fetch request: :func:`pace_fetcher` sets that
   attribute from the pacer just before each build (for a plain reader given a pacer too,
   :func:`worker.broker.clients.follow`).

All were written against the versions in :data:`PINNED` (pyproject.toml pins them too),
and :data:`RELIED_ON` holds a digest of the source of every private function they depend
on or replace. :func:`private_api_changes` compares the installed libraries with both: a
unit test fails loudly on an upgrade that changes them, and at run time the worker falls
back to Faust's own transport (slower, and open to the skipped posts of 2) and says why in its
log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import faust
import structlog
from aiokafka import errors as KafkaErrors
from aiokafka.consumer.fetcher import Fetcher, PartitionRecords
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from emotion_stream.worker.codec import UNDECODABLE_HEADER
from emotion_stream.worker.pacing import FetchPacer

log = structlog.get_logger(__name__)

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
"""The versions this module was written and tested against."""

RELIED_ON = {
    # Replaced by Consumer._drain_messages below.
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e83c63",
    # Reads the consumer generation only once its fetch returns, so a fetch in flight across a
    # rebalance hands on records from before the rebalance's seek: Consumer._deliver_all drops them.
    "faust.transport.consumer:Consumer.getmany": "4b168d84882a70d6",
    # What fetched_since_last_seek reads: the client's assignment, each partition's position,
    # set back by a seek and moved past the records a fetch hands out.
    "aiokafka.consumer.subscription_state:Assignment.state_value": "183fea82ef48f3e6",
    "aiokafka.consumer.subscription_state:TopicPartitionState.position.fget": "816b6b289bd14f5c",
    "aiokafka.consumer.subscription_state:TopicPartitionState.seek": "c20b56d7ba7b2872",
    "aiokafka.consumer.fetcher:FetchResult._update_position": "83fb1473bf10027b",
    # Extended by ConsumerThread below (the fetch wait is set on what it returns).
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": "c2701bfc3e6f6cad",
    # Replaced by EmotionApp._new_transport below.
    "faust.app.base:App._new_transport": "42db531312dd776f",
    # Reads self._fetch_max_wait_ms into every FetchRequest (what pace_fetcher relies on).
    "aiokafka.consumer.fetcher:Fetcher._get_actions_per_node": "1dab2cf937d165d0",
    # Wrapped by guard_record_batches below (reads self._records, sets self.next_fetch_offset).
    "aiokafka.consumer.fetcher:PartitionRecords._unpack_records": "b803e6d46480732c",
    # Calls the module's gzip_decode, snappy_decode, lz4_decode and zstd_decode, which
    # guard_record_batches replaces by bounded ones (the compiled twin of this module does the same).
    "aiokafka.record.default_records:_DefaultRecordBatchPy._maybe_uncompress": "c9d0dc2bed50cc86",
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
    source = inspect.getsource(inspect.unwrap(target))  # the library's own, under any wrapper of ours
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


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

    def _client_subscription(self) -> Any:
        """The Kafka client's subscription (its assignment and fetch positions); None if unknown."""
        try:
            return self._thread._ensure_consumer()._subscription
        except Exception:  # not started: nothing was fetched either
            return None

    async def _deliver_all(self, batch: AsyncIterator[tuple[TP, Message]]) -> None:
        delivered = 0
        subscription = self._client_subscription()
        dropped: dict[int, int] = {}
        async for tp, message in batch:
            delivered += 1
            if delivered % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if subscription is not None and not fetched_since_last_seek(subscription, tp, message.offset):
                # Fetched before a rebalance's seek moved the position back to the committed
                # offset (Faust reads the generation only once its fetch returns, so it hands such
                # records on). Handed on, the jump would count as a gap, done, and the posts
                # between the committed offset and this record would be committed unread. The
                # fetch from the new position reads it again.
                dropped[tp.partition] = dropped.get(tp.partition, 0) + 1
                continue
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
        if dropped:
            log.info(
                "records fetched before a rebalance set the position back were dropped; they are read again",
                records_by_partition=dropped,
            )


def fetched_since_last_seek(subscription: Any, tp: Any, offset: int) -> bool:
    """Whether a fetched record at ``offset`` of ``tp`` is still the client's to hand on: the
    partition is assigned and the fetch position has moved past the record. A record fetched
    before a seek moved the position back (every rebalance seeks to the committed offset) has
    not, nor has one of a partition the rebalance took away."""
    current = subscription.subscription
    assignment = current.assignment if current is not None else None
    state = assignment.state_value(tp) if assignment is not None else None
    return state is not None and state.has_valid_position and offset < state.position


def pending_join_error(app: Any) -> BaseException | None:
    """The error that stopped the consumer's group join, if one did. aiokafka keeps it for a
    poll that Faust does not make while it has no partitions, so it is read where it waits."""
    try:
        consumer = app.consumer._thread._ensure_consumer()
        return consumer._coordinator._pending_exception
    except Exception:  # not started, or the client's internals moved: the join's time bound still holds
        return None


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
                "was written for (slower, fetches wait 1.5 s on brokers that hold them, and a fetch in "
                "flight across a rebalance can skip posts)",
                changes=list(changes),
            )
            return super()._new_transport()
        return Transport(self.conf.broker_consumer, self)


# -- compressed record batches: bounded, and one that cannot be read is not a crash ----------------


class BatchTooLarge(Exception):
    """A compressed record batch that decompresses to more than the bound."""


def _grow(compressed: int, limit: int) -> Iterator[int]:
    """Output buffer sizes to try: from a guess at the ratio up to ``limit``, growing eightfold."""
    size = min(limit, max(1 << 16, 16 * compressed))
    while True:
        yield size
        if size >= limit:
            return
        size = min(limit, size * 8)


def _decompress_bounded(into: Callable[[Any, Any], int], data: Any, limit: int, name: str) -> bytes:
    for size in _grow(len(data), limit):
        out = bytearray(size)
        try:
            written = into(data, out)
        except Exception as exc:
            if "buffer" not in str(exc):  # corrupt data, not a short buffer
                raise
            continue
        del out[written:]
        return bytes(out)
    raise BatchTooLarge(f"a {name} record batch decompresses to more than {limit} bytes")


def _gzip_bounded(data: Any, limit: int) -> bytes:
    out = bytearray()
    rest = bytes(data)
    while rest:
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, as Kafka clients write either
        out += inflater.decompress(rest, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise BatchTooLarge(f"a gzip record batch decompresses to more than {limit} bytes")
        if not inflater.eof:
            raise zlib.error("truncated gzip record batch")
        rest = inflater.unused_data  # a gzip stream may hold several members
    return bytes(out)


def _snappy_bounded(data: Any, limit: int) -> bytes:
    import cramjam

    view = memoryview(data)
    if bytes(view[:8]) == b"\x82SNAPPY\x00":  # the xerial framing Kafka's Java client writes
        blocks, cursor = [], 16
        while cursor < len(view):
            (size,) = struct.unpack_from("!i", view, cursor)
            blocks.append(view[cursor + 4 : cursor + 4 + size])
            cursor += 4 + size
    else:
        blocks = [view]
    total = sum(cramjam.snappy.decompress_raw_len(block) for block in blocks)
    if total > limit:
        raise BatchTooLarge(f"a snappy record batch decompresses to {total} bytes, over {limit}")
    return b"".join(bytes(cramjam.snappy.decompress_raw(block)) for block in blocks)


def bounded_decoders(limit: int) -> dict[str, Callable[[Any], bytes]]:
    """aiokafka's four record-batch decoders, each refusing to decompress past ``limit`` bytes."""
    import cramjam

    return {
        "gzip_decode": functools.partial(_gzip_bounded, limit=limit),
        "snappy_decode": functools.partial(_snappy_bounded, limit=limit),
        "lz4_decode": lambda data: _decompress_bounded(cramjam.lz4.decompress_into, data, limit, "lz4"),
        "zstd_decode": lambda data: _decompress_bounded(cramjam.zstd.decompress_into, data, limit, "zstd"),
    }


class _BatchWatch:
    """Stands in for a fetch's record set and remembers the batch handed out last."""

    def __init__(self, records: Any) -> None:
        self._records = records
        self.last: Any = None

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        self.last = self._records.next_batch()
        return self.last


def _undecodable_record(tp: Any, batch: Any, error: BaseException) -> ConsumerRecord:
    first, last = batch.base_offset, batch.next_offset - 1
    reason = f"record batch at offsets {first}..{last} could not be decoded ({type(error).__name__}: {error})"
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=last,
        timestamp=batch.max_timestamp if batch.max_timestamp and batch.max_timestamp > 0 else -1,
        timestamp_type=0,
        key=None,
        value=None,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        headers=((UNDECODABLE_HEADER, reason.encode("utf-8", "replace")[:2048]),),
    )


_UNDECODABLE_ERRORS: tuple[type[BaseException], ...] = (
    BatchTooLarge,
    KafkaErrors.UnsupportedCodecError,
    NotImplementedError,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
)


def _guarded_unpack(unpack: Callable[[Any], Iterator[Any]]) -> Callable[[Any], Iterator[Any]]:
    def unpack_records(self: Any) -> Iterator[Any]:
        watch = _BatchWatch(self._records)
        self._records = watch
        while True:
            try:
                yield from unpack(self)
                return
            except _UNDECODABLE_ERRORS as exc:
                batch = watch.last
                if batch is None or batch.next_offset <= self.next_fetch_offset:
                    raise
                log.warning(
                    "a record batch could not be decoded; it goes on as one dead letter",
                    topic=self._tp.topic,
                    partition=self._tp.partition,
                    first_offset=batch.base_offset,
                    last_offset=batch.next_offset - 1,
                    error=f"{type(exc).__name__}: {exc}",
                )
                yield _undecodable_record(self._tp, batch, exc)
                self.next_fetch_offset = batch.next_offset

    unpack_records.guarded = True  # type: ignore[attr-defined]
    unpack_records.__wrapped__ = unpack  # type: ignore[attr-defined]
    return unpack_records


def guard_record_batches(max_batch_bytes: int) -> None:
    """Bound what one compressed record batch may decompress to, and turn a batch that cannot be
    decoded (over the bound, an unknown codec, corrupt data) into one record carrying
    :data:`UNDECODABLE_HEADER` at the batch's last offset, so the consumer moves past it and the
    reader can say what happened, instead of the fetch raising for ever. Process-wide; every
    Kafka consumer of the process (worker, aggregator, page, CLI) gets it."""
    from aiokafka.record import default_records as python_records

    modules = [python_records]
    with contextlib.suppress(ImportError):
        from aiokafka.record._crecords import default_records as c_records

        modules.append(c_records)
    for module in modules:
        for name, decoder in bounded_decoders(max_batch_bytes).items():
            setattr(module, name, decoder)
    if not getattr(PartitionRecords._unpack_records, "guarded", False):
        PartitionRecords._unpack_records = _guarded_unpack(PartitionRecords._unpack_records)
