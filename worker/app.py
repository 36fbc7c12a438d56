"""The Faust app: a thin agent around the micro-batcher and the batch processor.

Delivery is at-least-once and nothing is lost: the agent's stream never acks on its own;
a batch's input events are acked only after every result and dead letter of that batch has
been acknowledged by the broker, and Faust commits only acked offsets. A crash between the
two re-reads the batch (duplicates, keyed by post id, are possible; gaps are not).
On SIGTERM/SIGINT Faust stops the consumer first and waits for unacked events, so the
batch in progress and the ones already gathered finish, are flushed and are committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import structlog
from prometheus_client import generate_latest

from worker.batching import MicroBatcher
from worker.broker.profiles import profile_for
from worker.heap import freeze_startup_objects
from worker.observability import WorkerMetrics
from worker.pacing import FetchPacer
from worker.processing import BatchOutcome, BatchProcessor, InboundRecord, PreparedBatch
from worker.settings import WorkerSettings
from worker.transport import EmotionApp

log = structlog.get_logger(__name__)


async def _channel_events(stream: Any) -> AsyncIterator[Any]:
    """The events of the agent's input channel, read straight from its queue.

    Faust's Stream adds per-event machinery (processors, sensors, context, automatic acks)
    that this agent does not use and that costs more than the rest of the pipeline (see
    bench/). The conductor has already decoded each message into an event and counted it
    as in flight; the agent acks each event itself once the broker has its outputs, and
    Faust commits acked offsets as usual.
    """
    queue = stream.channel.queue
    while True:
        try:
            event = await queue.get()
        except StopAsyncIteration:  # Faust closes the channel this way when the worker stops
            return
        yield event
        # Whatever else is already queued needs no await per event.
        while not queue.empty():
            yield queue.get_nowait()


class EmotionStream:
    """Wires settings, a batch processor and metrics into a Faust app."""

    def __init__(
        self,
        settings: WorkerSettings,
        processor: BatchProcessor,
        metrics: WorkerMetrics | None = None,
        prepare_ahead: bool = True,
    ) -> None:
        """``prepare_ahead``: prepare a waiting full batch while the model runs the current one.

        Worth it when the model leaves CPU to spare (a GPU, or fewer torch threads than
        cores); when the model's threads take every core, preparing alongside only slows
        the model down (bench/: about 15 % of end-to-end throughput on 2 cores).
        """
        self.settings = settings
        self.prepare_ahead = prepare_ahead
        self.processor = processor
        self.metrics = metrics or WorkerMetrics()
        # One thread each: the model is the bottleneck, and batches must finish in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._prepare_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self._assigned = False
        self.failure: BaseException | None = None
        """What stopped the worker, if a batch failed in a way that must not be skipped."""
        self.on_fatal: Callable[[BaseException], None] | None = None
        """Called after such a failure, to stop the whole process (the CLI stops its Faust worker)."""
        self._seconds_per_post: float | None = None  # running estimate, for the fetch pacer
        self._failing: asyncio.Future | None = None
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = EmotionApp(
            s.group_id,
            broker=s.faust_broker,
            autodiscover=False,
            store="memory://",
            web_enabled=s.web_enabled,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            topic_disable_leader=True,
            # Results of one batch are sent together: a few ms of linger packs them into a
            # handful of produce requests instead of one request per result.
            producer_linger=0.005,
            **profile_for(s.broker_backend).faust,
        )
        profile = profile_for(s.broker_backend)
        app.fetch_max_wait_ms = profile.consumer.get("fetch_max_wait_ms")
        if app.fetch_max_wait_ms and profile.busy_fetch_wait_ms:
            app.fetch_pacer = FetchPacer(app.fetch_max_wait_ms, profile.busy_fetch_wait_ms)
        # Raw bytes in: decoding is the worker's own job, so a bad message becomes a dead
        # letter instead of a Faust decode error. Outputs go straight to the producer.
        self.input_topic = app.topic(s.input_topic, key_serializer="raw", value_serializer="raw")
        app.agent(self.input_topic, name="classify", concurrency=1)(self._agent)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        self._add_pages(app)
        app.timer(10.0)(self._progress)
        app.on_before_shutdown.connect(self._on_shutdown)
        return app

    async def _agent(self, stream: Any) -> None:
        s = self.settings
        # Startup is over (the app, its clients and an in-process model are loaded): keep
        # the cycle collector from walking all of that in the middle of a batch.
        frozen = freeze_startup_objects()
        log.info(
            "worker started",
            input_topic=s.input_topic,
            output_topic=s.output_topic,
            dlq_topic=s.dlq_topic,
            batch_size=s.batch_size,
            batch_wait_ms=s.batch_wait_ms,
            model=self.processor.model.name,
            model_version=self.processor.model.version,
            broker_backend=s.broker_backend,
            prepare_ahead=self.prepare_ahead,
            frozen_objects=frozen,
        )
        # The wait counts from each post's Kafka timestamp (see MicroBatcher).
        batches = MicroBatcher(
            _channel_events(stream),
            s.batch_size,
            s.batch_wait_ms / 1000,
            born=lambda e: e.message.timestamp,
        )
        # A batch goes through three stages: prepare (decode, tokenize) in one thread, the
        # model in another, then publish on the event loop. Batch N is published while N+1
        # is in the model, and with prepare_ahead a waiting full batch N+1 is prepared while
        # N is in the model; batches leave each stage in order, so acks (and commits)
        # never overtake a send.
        in_model: asyncio.Future | None = None
        publishing: asyncio.Future | None = None
        try:
            async for events in batches:
                started = time.perf_counter()
                prepared = await self.prepare(events)
                if in_model is not None:
                    await asyncio.shield(in_model)  # the model is free again
                in_model = asyncio.ensure_future(self.run_model(prepared, len(events)))
                publishing = asyncio.ensure_future(self._publish_after(events, in_model, publishing, started))
                publishing.add_done_callback(self._crash_on_failure)
                if not (self.prepare_ahead and batches.full_batch_waiting()):
                    # A partial batch is taken only once the model is free, so it gathers
                    # everything that arrives meanwhile (bigger batches cost less per post);
                    # a full one is taken at once and prepared while this one runs, when
                    # the model leaves CPU to spare for that.
                    await asyncio.wait([in_model])
            if publishing is not None:
                await asyncio.shield(publishing)
        except Exception as exc:
            await self._fail(exc)

    async def _fail(self, exc: BaseException) -> None:
        # The failed batch stays unacked, so its offsets are never committed: stop the
        # worker and let a restart re-read it rather than skip it.
        if self.failure is None:
            self.failure = exc
            log.error("batch failed; stopping so the batch is re-read on restart", error=repr(exc))
            await self.app.crash(exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)  # a crashed app alone leaves the process up, doing nothing

    def _crash_on_failure(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failing = asyncio.ensure_future(
                self._fail(task.exception())
            )  # held: a task may be collected

    async def _publish_after(
        self,
        events: Sequence[Any],
        in_model: asyncio.Future,
        previous: asyncio.Future | None,
        started: float,
    ) -> None:
        outcome = await in_model
        if previous is not None:
            await previous  # the batch before this one is acked first
        await self.publish(events, outcome, started)

    async def prepare(self, events: Sequence[Any]) -> PreparedBatch:
        """Decode the events and prepare the model's input, off the event loop."""
        records = [
            InboundRecord(m.topic, m.partition, m.offset, m.key, m.value) for m in (e.message for e in events)
        ]
        self.metrics.posts_in.inc(len(records))
        self.metrics.batch_size.observe(len(records))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare_executor, self.processor.prepare, records)

    async def run_model(self, prepared: PreparedBatch, posts: int) -> BatchOutcome:
        """Run a prepared batch through the model and encode its results, off the event loop."""
        loop = asyncio.get_running_loop()
        pacer = self.app.fetch_pacer
        if pacer is not None and self._seconds_per_post is not None:
            # A little under the expected model time: a fetch that comes back early costs
            # one more request, one that comes back late delays the next batch.
            pacer.busy_for(0.8 * self._seconds_per_post * posts)
        try:
            outcome = await loop.run_in_executor(self._executor, self.processor.finish, prepared)
        finally:
            if pacer is not None:
                pacer.idle()
        if outcome.model_seconds and posts:
            per_post = outcome.model_seconds / posts
            previous = self._seconds_per_post
            self._seconds_per_post = per_post if previous is None else 0.8 * previous + 0.2 * per_post
        return outcome

    async def publish(self, events: Sequence[Any], outcome: BatchOutcome, started: float) -> None:
        """Send a batch's results and dead letters; once the broker has them all, ack its events."""
        # Straight to the app's producer: Topic.send wraps every message in futures and
        # sensor calls that cost more than the send itself. Each call returns the broker's ack.
        send = self.app.producer.send
        output, dlq = self.settings.output_topic, self.settings.dlq_topic
        pending = [await send(output, m.key, m.value, None, None, None) for m in outcome.results]
        pending += [await send(dlq, m.key, m.value, None, None, None) for m in outcome.dead_letters]
        await asyncio.gather(*pending)
        for event in events:
            event.ack()
        self._record(outcome, time.perf_counter() - started)

    def _record(self, outcome: BatchOutcome, seconds: float) -> None:
        m = self.metrics
        m.results_out.inc(len(outcome.results))
        for label in outcome.labels:
            m.labels.labels(label=label).inc()
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

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        self._assigned = True
        self.metrics.ready.set(1)
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        self.metrics.ready.set(0)
        log.info(
            "stopped consuming; in-flight batches finished and committed",
            **self.metrics.totals(),
        )

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        self._assigned = False
        self.metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return self._assigned and not self.app.should_stop and not self.app.rebalancing

    def _add_pages(self, app: faust.App) -> None:
        # Faust turns a plain function into a view class (it becomes the class's `get`),
        # so the handlers are closures rather than bound methods.
        async def health(view: Any, request: Any) -> Any:
            return view.json({"status": "ok"})

        async def ready(view: Any, request: Any) -> Any:
            body = {"ready": self.ready, "model": self.processor.model.model_dump()}
            return view.json(body, status=200 if self.ready else 503)

        async def metrics(view: Any, request: Any) -> Any:
            return view.text(
                generate_latest(self.metrics.registry).decode("utf-8"), content_type="text/plain"
            )

        app.page("/health")(health)
        app.page("/ready")(ready)
        app.page("/metrics")(metrics)

    async def _progress(self) -> None:
        log.info("progress", **self.metrics.totals(), ready=self.ready)
