"""The stream's three stages and their ack ordering, free of Faust.

A batch goes through three stages: prepare (decode, tokenize) in one thread, the model in
another, then publish on the event loop. Batch N is published while N+1 is in the model, and
with ``prepare_ahead`` a waiting full batch N+1 is prepared while N is in the model; batches
leave each stage in order, so acks (and commits) never overtake a send. At most
:data:`PUBLISHING_BATCHES` batches await the broker at once, which holds the fetch back when the
broker is slow. An event is anything with a ``message`` (topic, partition, offset, key, value,
headers, timestamp in seconds) and an ``ack()``: :mod:`worker.app` hands in Faust's events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import structlog

from emotion_stream.worker import policy
from emotion_stream.worker.batching import ByteBudget, MicroBatcher
from emotion_stream.worker.classify import ClassifyDesk
from emotion_stream.worker.codec import InboundRecord
from emotion_stream.worker.health import Watchdog
from emotion_stream.worker.model.api import ModelUnavailable
from emotion_stream.worker.observability import WorkerMetrics
from emotion_stream.worker.pacing import FetchPacer
from emotion_stream.worker.processing import BatchOutcome, BatchProcessor, PreparedBatch
from emotion_stream.worker.publishing import Publisher

log = structlog.get_logger(__name__)

PUBLISHING_BATCHES = 2
"""Batches whose outputs may await the broker's acknowledgement at once; the next one waits."""

FIRST_BATCHES_MODEL_TIMEOUT_S = 300.0
"""The model's bound before its speed is measured (the first batches warm it up)."""


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    """A record's headers as (name, value) pairs, whichever form they come in."""
    if not headers:
        return ()
    pairs = headers.items() if hasattr(headers, "items") else headers
    return tuple((str(name), bytes(value or b"")) for name, value in pairs)


def message_size(event: Any) -> int:
    message = event.message
    return len(message.value or b"") + len(message.key or b"")


def inbound_record(message: Any) -> InboundRecord:
    return InboundRecord(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        _headers(message.headers),
        message.timestamp if message.timestamp and message.timestamp > 0 else None,
    )


class Pipeline:
    """Batches in, results and dead letters acknowledged by the broker out, events acked after."""

    def __init__(
        self,
        processor: BatchProcessor,
        publisher: Publisher,
        metrics: WorkerMetrics,
        watchdog: Watchdog,
        budget: ByteBudget,
        *,
        batch_size: int,
        batch_wait_s: float,
        model_timeout_s: float | None = None,
        desk: ClassifyDesk | None = None,
        prepare_ahead: bool = True,
        pacer: Callable[[], FetchPacer | None] = lambda: None,
        on_failure: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        """``prepare_ahead``: prepare a waiting full batch while the model runs the current one
        (worth it only when the model leaves CPU to spare). ``pacer``: the fetch pacer to tell
        how long the model will be busy, if there is one. ``on_failure``: called with what
        failed a batch's publication (the batch stays unacked)."""
        self.processor = processor
        self.publisher = publisher
        self.metrics = metrics
        self.watchdog = watchdog
        self.budget = budget
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.model_timeout_s = model_timeout_s
        self.desk = desk
        self.prepare_ahead = prepare_ahead
        self._pacer = pacer
        self._on_failure = on_failure
        # One thread each: the model is the bottleneck, and batches must finish in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self._publishing: list[asyncio.Future] = []
        self._seconds_per_post: float | None = None  # running estimate, for the pacer and the bound
        self._send_errors_counted = 0
        self.stopping = False
        """Set on a graceful stop: no new batch enters the model, the ones in it are finished."""

    async def run(self, events: AsyncIterator[Any]) -> None:
        """Run until ``events`` ends or a stop begins; raises what failed a batch."""
        # The wait counts from each post's Kafka timestamp (see MicroBatcher); the bytes of
        # every message count against the in-flight budget until its batch is acknowledged.
        batches = MicroBatcher(
            events,
            self.batch_size,
            self.batch_wait_s,
            born=lambda e: e.message.timestamp,
            budget=self.budget,
            size=message_size,
        )
        in_model: asyncio.Future | None = None
        publishing: asyncio.Future | None = None
        async for batch in batches:
            started = time.perf_counter()
            requests = self.desk.take(self.batch_size) if self.desk is not None else []
            prepared = await self.prepare(batch, requests)
            if in_model is not None:
                await asyncio.shield(in_model)  # the model is free again
            await self._room_to_publish()
            if self.stopping:
                # This batch stays unacked and is read again after a restart: nothing of it
                # is published after the final commit.
                if requests and self.desk is not None:
                    self.desk.fail(requests, RuntimeError("the worker is stopping"))
                break
            # Only whole batches behind this one go in before a post fetched now: a partial
            # one is taken when the model is free, with whatever arrived by then.
            behind = batches.waiting() // self.batch_size * self.batch_size
            in_model = asyncio.ensure_future(self.run_model(prepared, len(batch), behind))
            if requests:
                in_model.add_done_callback(partial(self._answer, requests))
            publishing = asyncio.ensure_future(self._publish_after(batch, in_model, publishing, started))
            publishing.add_done_callback(self._failed)
            self._publishing.append(publishing)
            if not (self.prepare_ahead and batches.full_batch_waiting()):
                # A partial batch is taken only once the model is free, so it gathers
                # everything that arrives meanwhile (bigger batches cost less per post); a
                # full one is taken at once and prepared while this one runs, when the model
                # leaves CPU to spare for that.
                await asyncio.wait([in_model])
        if publishing is not None:
            await asyncio.shield(publishing)

    def idle(self) -> bool:
        """Nothing holds the consumer back: no batch in the model or awaiting the broker."""
        return self.budget.items == 0

    async def finish_in_flight(self) -> None:
        """Start no other batch, and let the ones in the model be published and acked."""
        self.stopping = True
        pending = [f for f in self._publishing if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.model_bound() + self.publisher.timeout_s)

    def _failed(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._on_failure(task.exception())

    async def _room_to_publish(self) -> None:
        """Wait while too many batches await the broker: a slow broker holds the fetch back."""
        self._publishing = [f for f in self._publishing if not f.done()]
        while len(self._publishing) >= PUBLISHING_BATCHES:
            await asyncio.wait([self._publishing[0]])  # wait only: its failure is handled by its callback
            self._publishing = [f for f in self._publishing if not f.done()]

    async def _publish_after(
        self, events: Sequence[Any], in_model: asyncio.Future, previous: asyncio.Future | None, started: float
    ) -> None:
        outcome = await in_model
        if previous is not None:
            await previous  # the batch before this one is acked first
        await self.publish(events, outcome, started)

    def _answer(self, requests: list, in_model: asyncio.Future) -> None:
        """Hand the requested texts' predictions to the /classify requests that wait for them."""
        assert self.desk is not None
        if in_model.cancelled():
            self.desk.fail(requests, asyncio.CancelledError())
        elif in_model.exception() is not None:
            self.desk.fail(requests, in_model.exception())
        else:
            self.desk.answer(requests, in_model.result().answers)

    async def serve_quiet_requests(self, poll_s: float) -> None:
        """Run /classify requests on their own, through the same model thread, when the input
        topic is quiet (no post in flight) and no batch took them within ``poll_s``."""
        assert self.desk is not None
        loop = asyncio.get_running_loop()
        while True:
            await self.desk.wait_for_work()
            await asyncio.sleep(poll_s)
            while self.desk.waiting:
                if not self.idle():
                    # Posts are on their way through: the stream's next batch takes the
                    # requests, at no extra model call (a call of their own would hold that
                    # batch back).
                    await asyncio.sleep(poll_s)
                    continue
                requests = self.desk.take(self.batch_size)
                try:
                    prepared = await loop.run_in_executor(
                        self._prepare_executor, self.processor.prepare, [], self.desk.texts_of(requests)
                    )
                    outcome = await loop.run_in_executor(self._executor, self.processor.finish, prepared)
                except ModelUnavailable as exc:
                    self.desk.fail(requests, exc)
                    raise
                except Exception as exc:
                    self.desk.fail(requests, exc)
                else:
                    self.desk.answer(requests, outcome.answers)

    async def prepare(self, events: Sequence[Any], requests: Sequence[Any] = ()) -> PreparedBatch:
        """Decode the events and prepare the model's input (with the texts of ``requests``,
        waiting /classify requests), off the event loop."""
        records = [inbound_record(e.message) for e in events]
        self.metrics.posts_in.inc(len(records))
        self.metrics.batch_size.observe(len(records))
        loop = asyncio.get_running_loop()
        texts = ClassifyDesk.texts_of(list(requests))
        return await loop.run_in_executor(self._prepare_executor, self.processor.prepare, records, texts)

    async def run_model(self, prepared: PreparedBatch, posts: int, behind: int = 0) -> BatchOutcome:
        """Run a prepared batch of ``posts`` through the model and encode its results, off the
        event loop; ``behind``: posts already gathered in whole batches after it."""
        loop = asyncio.get_running_loop()
        pacer = self._pacer()
        if pacer is not None and self._seconds_per_post is not None:
            # A little under the time the model needs for this batch and the whole batches
            # already gathered behind it: a post fetched sooner could not go in sooner. A fetch
            # that comes back early costs a request in the broker and the worker (under a
            # backlog, nearly all empty: bench/README.md), one that comes back late delays the
            # next batch.
            pacer.busy_for(0.8 * self._seconds_per_post * (posts + behind))
        self.watchdog.model_started(self.model_bound())
        try:
            outcome = await loop.run_in_executor(self._executor, self.processor.finish, prepared)
        finally:
            self.watchdog.model_finished()
            if pacer is not None:
                pacer.idle()
        if outcome.model_seconds and posts:
            per_post = outcome.model_seconds / posts
            previous = self._seconds_per_post
            self._seconds_per_post = per_post if previous is None else 0.8 * previous + 0.2 * per_post
        return outcome

    def model_bound(self) -> float:
        """How long a full batch may stay in the model (EMOTION_MODEL_TIMEOUT_S, else measured)."""
        if self.model_timeout_s is not None:
            return self.model_timeout_s
        if self._seconds_per_post is None:
            return FIRST_BATCHES_MODEL_TIMEOUT_S
        # The bisection of a failed batch and the model's retries run inside the bound too.
        return max(60.0, 20 * self._seconds_per_post * self.batch_size + sum(policy.MODEL_RETRY_DELAYS))

    async def publish(self, events: Sequence[Any], outcome: BatchOutcome, started: float) -> None:
        """Send a batch's results and dead letters; once the broker has them all, ack its events."""
        await self.publisher.publish(outcome)
        now = time.time()
        for event in events:
            event.ack()
            timestamp = event.message.timestamp
            if timestamp and timestamp > 0:
                self.metrics.latency.observe(max(0.0, now - timestamp))
        self.watchdog.acked()
        await self.budget.release(sum(message_size(e) for e in events), len(events))
        self._record(outcome, time.perf_counter() - started)

    def _record(self, outcome: BatchOutcome, seconds: float) -> None:
        m = self.metrics
        m.results_out.inc(len(outcome.results) - outcome.refused_results)
        m.send_errors.inc(self.publisher.send_errors - self._send_errors_counted)
        self._send_errors_counted = self.publisher.send_errors
        for label in outcome.labels:
            m.labels.labels(label=label).inc()
        for kind in outcome.set_apart:
            m.set_apart.labels(kind=kind).inc()
        for kind in outcome.dead_letter_kinds:
            m.dead_letters.labels(kind=kind).inc()
        m.batch_seconds.observe(seconds)
        if outcome.model_seconds:
            m.model_seconds.observe(outcome.model_seconds)
        log.debug(
            "batch done",
            results=len(outcome.results),
            dead_letters=len(outcome.dead_letters),
            model_ms=round(outcome.model_seconds * 1000, 1),
            batch_ms=round(seconds * 1000, 1),
        )
