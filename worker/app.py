"""The Faust app: the wiring around the stream's pipeline (:mod:`worker.pipeline`), its pages
(health, readiness, metrics, /classify), lag and group-join probing, and its stops.

Delivery is at-least-once and nothing is lost: the agent's stream never acks on its own;
a batch's input events are acked only after every result and dead letter of that batch has
been acknowledged by the broker, and Faust commits only acked offsets (every
``EMOTION_COMMIT_INTERVAL_MS``). A crash between the two re-reads the batch (duplicates,
keyed by post id, are possible; gaps are not). On SIGTERM/SIGINT no batch enters the model
any more, the ones in it are published and acked, and the worker commits before it exits:
nothing is published after the final commit.

Memory is bounded under any backlog (see the pipeline), and a watchdog (:mod:`worker.health`)
stops a worker that makes no progress.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import faust
import structlog
from faust.web import View
from prometheus_client import generate_latest

from emotion_stream.worker.batching import ByteBudget
from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.classify import ClassifyDesk, ClassifyRejected
from emotion_stream.worker.health import BrokerProbe, Watchdog, stop_worker
from emotion_stream.worker.heap import freeze_startup_objects
from emotion_stream.worker.observability import WorkerMetrics, WorkerSensor
from emotion_stream.worker.pacing import FetchPacer
from emotion_stream.worker.pipeline import Pipeline
from emotion_stream.worker.processing import BatchProcessor
from emotion_stream.worker.publishing import Publisher
from emotion_stream.worker.settings import WorkerSettings
from emotion_stream.worker.transport import EmotionApp, guard_record_batches, pending_join_error

log = structlog.get_logger(__name__)

RESULT_BATCH_BYTES = 256 << 10
"""The producer's record batches, per partition: a worker batch's results (256 of about
600 bytes) in one, where the client's default of 16 KiB cut them into ten. Fewer, larger
batches cost the worker and the broker less per result (alternating runs of two 10,000-post
bursts, 1 MiB or 256 KiB against 16 KiB: the worker's and the broker's CPU per post lower in 5
of 6 pairs, by 0.01-0.04 CPU-seconds per 1,000 posts together; bench/README.md). Never above
EMOTION_MAX_MESSAGE_BYTES: a broker refuses a record batch over the topic's
``max.message.bytes`` as a whole."""

JOIN_ERROR_HINTS = {
    "InconsistentGroupProtocolError": "another consumer in the group uses a different partition "
    "assignment protocol; give the worker a group of its own (EMOTION_GROUP_ID)",
    "GroupAuthorizationFailedError": "the credentials may not use this consumer group; grant them "
    "READ on it (EMOTION_GROUP_ID)",
    "InvalidSessionTimeoutError": "the broker refuses the consumer's session timeout "
    "(group.min/max.session.timeout.ms)",
    "InvalidGroupIdError": "the broker refuses the group id (EMOTION_GROUP_ID)",
}


async def _channel_events(stream: Any, on_events: Callable[[], None]) -> AsyncIterator[Any]:
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
        on_events()
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
        self._assigned = False
        self.failure: BaseException | None = None
        """What stopped the worker, if a batch failed in a way that must not be skipped."""
        self.on_fatal: Callable[[BaseException], None] | None = None
        """Called after such a failure, to stop the whole process (the CLI stops its Faust worker)."""
        self._failing: asyncio.Future | None = None
        self.budget = ByteBudget(settings.max_inflight_bytes)
        # A compressed batch counts against the same bound once decompressed.
        guard_record_batches(settings.max_inflight_bytes)
        self.publisher = Publisher(
            lambda *args: self.app.producer.send(*args),
            settings.output_topic,
            settings.dlq_topic,
            settings.max_message_bytes,
            settings.send_timeout_s,
        )
        self.watchdog = Watchdog.for_settings(settings, self._on_dead)
        self.security = settings.security()  # read once: the password file, the TLS files
        self.broker_probe = BrokerProbe(settings.bootstrap_servers, security=self.security.aiokafka())
        self.desk: ClassifyDesk | None = None
        if settings.classify:
            token = settings.classify_token.get_secret_value() if settings.classify_token else None
            self.desk = ClassifyDesk(settings.classify_max_texts, settings.classify_max_concurrent, token)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pipeline = Pipeline(
            processor,
            self.publisher,
            self.metrics,
            self.watchdog,
            self.budget,
            batch_size=settings.batch_size,
            batch_wait_s=settings.batch_wait_s,
            model_timeout_s=settings.model_timeout_s,
            desk=self.desk,
            prepare_ahead=prepare_ahead,
            pacer=lambda: self.app.fetch_pacer,
            on_failure=self._failed_task,
        )
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s = self.settings
        app = EmotionApp(
            s.group_id,
            broker=s.faust_broker,
            autodiscover=False,
            store="memory://",
            # Faust makes its data directory at start even with nothing to store: keep it out of
            # the working directory (another team's project, when the test kit starts a worker).
            datadir=str(Path(tempfile.gettempdir()) / "emotion-stream-{conf.name}-data"),
            web_enabled=s.web_enabled,
            web_bind=s.web_host,
            web_host=s.web_host,
            web_port=s.web_port,
            topic_disable_leader=True,
            # Results of one batch are sent together: a few ms of linger packs them into a
            # handful of produce requests instead of one request per result.
            producer_linger=0.005,
            producer_max_batch_size=min(RESULT_BATCH_BYTES, s.max_message_bytes),
            producer_max_request_size=s.max_message_bytes + (64 << 10),
            producer_request_timeout=s.send_timeout_s,
            consumer_max_fetch_size=max(4 << 20, 2 * s.max_message_bytes),
            broker_commit_interval=s.commit_interval_s,
            # Faust's own pages (routing, tables, stats, graphs) are not this worker's API.
            web_router_enabled=False,
            web_tables_enabled=False,
            web_stats_enabled=False,
            web_graph_enabled=False,
            broker_credentials=self.security.faust(),
            **profile_for(s.broker_backend).faust,
        )
        app.sensors.add(WorkerSensor(self.metrics, self.watchdog))
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
        app.timer(5.0)(self._measure_lag)
        app.task(self._probe_broker)
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
        self._loop = asyncio.get_running_loop()
        # The heartbeat is a task of its own, not a Faust timer: Faust starts its timers only
        # once the first group join is over, and that join can take as long as a dead
        # member's session timeout, all while the event loop runs.
        beating = asyncio.ensure_future(self._heartbeat())
        beating.add_done_callback(self._crash_on_failure)
        if self.desk is not None:
            # The quiet-topic poll follows the batch wait: a request waits no longer than a post.
            serving = asyncio.ensure_future(self.pipeline.serve_quiet_requests(s.batch_wait_s))
            serving.add_done_callback(self._crash_on_failure)
        self.watchdog.watch_consumer(lag=self._total_lag, idle=self.pipeline.idle)
        conf = self.app.conf
        self.watchdog.watch_join(
            f"group {s.group_id}",
            conf.broker_session_timeout + conf.broker_rebalance_timeout + 30.0,
            self._join_error,
        )
        self.watchdog.start()
        try:
            await self.pipeline.run(_channel_events(stream, self.watchdog.events_arrived))
        except Exception as exc:
            await self._fail(exc)
        finally:
            self.watchdog.stop()  # the agent is done: nothing left for it to watch

    def _total_lag(self) -> int:
        return int(sum(self.metrics.lag_by_partition().values()))

    def _on_dead(self, reason: str) -> None:
        """The watchdog's verdict (from its thread): stop, exit 1, the batch in flight uncommitted."""
        if self._loop is None:
            return
        error = RuntimeError(f"no progress: {reason}")
        stop_worker(self._loop, lambda: self._failed_task(error))

    def _failed_task(self, error: BaseException) -> None:
        self._failing = asyncio.ensure_future(self._fail(error))

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
            self._failed_task(task.exception())  # held: a task may be collected

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        self.watchdog.joined()
        self._assigned = True
        self.metrics.ready.set(1)
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        self.watchdog.stop()  # a graceful stop waits for the batches in flight, not for the watchdog
        self.metrics.ready.set(0)
        await self._finish_in_flight()
        log.info(
            "stopped consuming; in-flight batches finished and committed",
            **self.metrics.totals(),
        )

    async def _finish_in_flight(self) -> None:
        """Let the batches already in the model be published and acked, start no other, then
        commit: nothing is published after the final commit, so a restart labels nothing twice.
        Faust's own wait for unacked messages does not cover this: on a stop it may give up
        before the agent's batches are done."""
        if self.failure is not None:
            self.pipeline.stopping = True
            return  # a failed stop waits for nothing: what is in flight stays uncommitted, re-read later
        await self.pipeline.finish_in_flight()
        try:
            await self.app.consumer.commit()
        except Exception as exc:  # the broker is away: what was acked is re-read, never lost
            log.warning("the final commit failed; the last batches will be read again", error=repr(exc))

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        self.watchdog.joining()
        self._assigned = False
        self.metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return (
            self._assigned
            and not self.app.should_stop
            and not self.app.rebalancing
            and self.broker_probe.reachable
            and not self.watchdog.problems()
        )

    def _join_error(self) -> str | None:
        """The error that stopped the consumer's group join, if one did: the Kafka client holds
        it for a poll that the framework does not make while it has no partitions, so without
        this the worker would wait for ever (an assignment protocol another member of the group
        does not share, a session timeout the broker refuses, no rights on the group)."""
        error = pending_join_error(self.app)
        if error is None:
            return None
        hint = JOIN_ERROR_HINTS.get(type(error).__name__, "")
        return f"{type(error).__name__}{': ' + hint if hint else ''}"

    async def _heartbeat(self, interval_s: float = 0.5) -> None:
        while not self.app.should_stop:
            self.watchdog.beat()
            self.metrics.in_flight.set(self.budget.items)
            self.metrics.in_flight_bytes.set(self.budget.used)
            await asyncio.sleep(interval_s)

    async def _probe_broker(self) -> None:
        await self.broker_probe.run()

    async def _measure_lag(self) -> None:
        """Per partition: the high watermark the consumer last saw, less its position."""
        consumer = self.app.consumer
        try:
            assignment = consumer.assignment()
            lags = {}
            for tp in assignment:
                position = await consumer.position(tp)
                highwater = consumer.highwater(tp)
                if position is not None and highwater is not None:
                    lags[tp.partition] = max(0, highwater - position)
        except Exception as exc:  # not assigned yet, or the broker is away: the next round will tell
            log.debug("lag not measured", error=repr(exc))
            return
        self.metrics.set_lag(lags)

    def _add_pages(self, app: faust.App) -> None:
        # Faust turns a plain function into a view class (it becomes the class's `get`),
        # so the handlers are closures rather than bound methods.
        async def health(view: Any, request: Any) -> Any:
            problems = self.watchdog.problems()
            if problems:
                return view.json({"status": "unhealthy", "problems": problems}, status=503)
            return view.json({"status": "ok"})

        async def ready(view: Any, request: Any) -> Any:
            ready = self.ready
            body: dict[str, Any] = {"ready": ready, "model": self.processor.model.model_dump()}
            if not self.broker_probe.reachable:
                body["broker"] = f"unreachable: {self.broker_probe.last_error}"
            return view.json(body, status=200 if ready else 503)

        async def metrics(view: Any, request: Any) -> Any:
            return view.text(
                generate_latest(self.metrics.registry).decode("utf-8"), content_type="text/plain"
            )

        if self.desk is not None:
            from emotion_stream.worker.openapi import classify_openapi

            description = classify_openapi(self.desk.max_texts, self.desk.max_chars, self.desk.max_body_bytes)

            async def openapi(view: Any, request: Any) -> Any:
                return view.json(description)

            app.page("/classify")(self._classify_view())
            app.page("/openapi.json")(openapi)
        app.page("/health")(health)
        app.page("/ready")(ready)
        app.page("/metrics")(metrics)

    def _classify_view(self) -> type:
        desk, stream = self.desk, self
        assert desk is not None

        class Classify(View):
            async def post(self, request: Any) -> Any:
                # Every answer is JSON and counted, errors too; a client's error is logged at
                # debug only (no traceback: it is the client's to fix, and it may be a flood).
                try:
                    desk.check_token(request.headers.get("Authorization"))
                    if stream.failure is not None:
                        raise ClassifyRejected(503, "the worker is stopping", {"Retry-After": "5"})
                    texts = desk.parse(await desk.read_body(request))
                    predictions = await desk.classify(texts)
                except ClassifyRejected as rejected:
                    stream.metrics.classify_requests.labels(status=str(rejected.status)).inc()
                    log.debug("classify refused", status=rejected.status, reason=str(rejected))
                    response = self.json({"error": str(rejected)}, status=rejected.status)
                    for name, value in rejected.headers.items():
                        response.headers[name] = value
                    if rejected.status == 401:
                        response.headers["WWW-Authenticate"] = "Bearer"
                    return response
                except (ConnectionError, asyncio.IncompleteReadError):
                    raise  # the client went away: nobody to answer
                except Exception:
                    stream.metrics.classify_requests.labels(status="500").inc()
                    log.exception("classify failed")
                    return self.json({"error": "the worker failed on this request"}, status=500)
                stream.metrics.classify_requests.labels(status="200").inc()
                stream.metrics.classify_texts.inc(len(texts))
                return self.json(desk.answer_body(predictions, stream.processor.model.model_dump()))

        return Classify

    async def _progress(self) -> None:
        log.info("progress", **self.metrics.totals(), ready=self.ready)
