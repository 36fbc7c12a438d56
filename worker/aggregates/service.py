"""`emotion-stream aggregate`: windowed emotion counts from the results, for dashboards.

Reads the output and dead-letter topics in its own consumer group, counts them in tumbling
windows (:mod:`worker.aggregation`) and publishes each changed window to the aggregates topic
every EMOTION_AGGREGATE_UPDATE_S. The aggregates topic is also its memory: at start it reads
the topic back (until it has been quiet for a moment, which works on brokers whose end
offsets cannot be trusted) and carries on from the latest record of each window.

At-least-once: offsets are committed only after the broker acknowledged the records that
count them, so a crash never loses a counted post. A crash between that acknowledgement and
the commit counts the results of that last interval twice (at most one update interval of
results); a stop by SIGTERM or Ctrl-C publishes and commits first, and counts nothing twice.

Run one aggregator per output topic: two would each count a share of its partitions and
publish conflicting records for the same window.

Every record is read with the codec's hardened reader: a record that is not a JSON object
within the limits is skipped and counted by reason, never an exception. Times are bounded
around the wall clock (:mod:`worker.aggregation`). Like the worker, it serves ``/health``
(503 while its watchdog sees no progress: a blocked event loop, a consumer that receives
nothing while records wait, publications that are never committed; it exits 1 once that lasts
EMOTION_UNHEALTHY_GRACE_S), ``/ready`` and ``/metrics`` on EMOTION_AGGREGATE_HOST and
EMOTION_AGGREGATE_PORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from emotion_stream.worker.aggregates.windows import Windows
from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.codec import Limits, Unreadable, read_object
from emotion_stream.worker.health import BrokerProbe, Watchdog, start_site, stop_worker
from emotion_stream.worker.settings import AggregatorSettings

log = structlog.get_logger(__name__)

RECOVERY_QUIET_S = 2.0
"""At start, the aggregates topic counts as read once this long passes without a record."""
LAG_INTERVAL_S = 5.0
"""How often the consumer's lag is measured (what tells a stalled consumer from an idle one)."""
MAX_KAFKA_TIMESTAMP_MS = 2**63
RESULTS, DEAD_LETTERS = "results", "dead_letters"


class Aggregator:
    def __init__(self, settings: AggregatorSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: the watchdog's (monotonic) clock."""
        self.settings = settings
        self.windows = Windows(
            settings.aggregate_window_s,
            settings.aggregate_grace_s,
            settings.aggregate_retain_s,
            tuple(settings.aggregate_dimensions),
            max_future_s=settings.aggregate_max_skew_s,
            max_past_s=settings.aggregate_max_age_s,
        )
        self.limits = Limits(max_bytes=settings.max_message_bytes)
        self.security = settings.security().aiokafka()
        self.profile = profile_for(settings.broker_backend)
        self.published = 0
        self.read: Counter[str] = Counter()  # records read, by topic kind
        self.skipped: Counter[str] = Counter()  # unreadable records, by the codec's error kind
        self.failure: str | None = None  # why the watchdog stopped it, if it did
        self.recovered = False
        self.assigned = False
        self.lag = 0
        self._stopping = asyncio.Event()
        self.on_publish: Callable[[list[dict[str, Any]]], None] | None = None
        self.watchdog = Watchdog.for_settings(settings, self._on_dead, clock)
        self.watchdog.watch_consumer(lag=lambda: self.lag, idle=lambda: True)
        self.broker_probe = BrokerProbe(settings.bootstrap_servers, security=self.security)
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        self._stopping.set()

    def _on_dead(self, reason: str) -> None:
        """The watchdog's verdict (from its thread): stop, publishing and committing if the
        event loop still runs, and exit 1 for the supervisor."""
        if self._loop is None:
            return

        def fail() -> None:
            self.failure = reason
            self.stop()

        stop_worker(self._loop, fail)

    @property
    def ready(self) -> bool:
        return (
            self.recovered
            and self.assigned
            and not self._stopping.is_set()
            and self.broker_probe.reachable
            and not self.watchdog.problems()
        )

    @property
    def topics(self) -> list[str]:
        """What it counts: the results, the dead letters, and the routed unreadable posts' results
        when the worker routes them (EMOTION_UNREADABLE=route)."""
        s = self.settings
        routed = [s.unreadable_topic] if s.unreadable == "route" else []
        return [s.output_topic, s.dlq_topic, *routed]

    async def recover(self) -> int:
        """Read the aggregates topic back; returns the records restored."""
        from emotion_stream.worker.broker.clients import follow

        s = self.settings
        async for record in follow(
            s.bootstrap_servers,
            [s.aggregates_topic],
            idle_timeout=RECOVERY_QUIET_S,
            backend=s.broker_backend,
            security=self.security,
        ):
            self.watchdog.events_arrived()
            try:
                value = read_object(record.value, self.limits, what="aggregate")
            except Unreadable as exc:
                self.windows.recovered["unreadable"] += 1
                log.debug("unreadable aggregate skipped", error=exc.kind, offset=record.offset)
                continue
            self.windows.restore(value)
        return self.windows.recovered["restored"]

    def count(self, topic: str, value: bytes | None, timestamp_ms: Any = None, headers: Any = ()) -> bool:
        """Count one record of the output or dead-letter topic; True when it counted in a window."""
        dead_letter = topic == self.settings.dlq_topic
        self.read[DEAD_LETTERS if dead_letter else RESULTS] += 1
        try:
            message = read_object(value, self.limits, what="record", headers=headers)
        except Unreadable as exc:
            self.skipped[exc.kind] += 1
            log.debug("unreadable record skipped", topic=topic, error=exc.kind)
            return False
        record_time = None
        if isinstance(timestamp_ms, int) and 0 <= timestamp_ms < MAX_KAFKA_TIMESTAMP_MS:
            record_time = timestamp_ms / 1000  # -1 (or none): the record has no timestamp
        if dead_letter:
            return self.windows.add_dead_letter(message, record_time)
        return self.windows.add_result(message, record_time)

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        s = self.settings
        self._loop = asyncio.get_running_loop()
        runner, address = await self._serve()
        helpers = [asyncio.ensure_future(self._heartbeat()), asyncio.ensure_future(self.broker_probe.run())]
        self.watchdog.start()
        consumer = producer = None
        try:
            restored = await self.recover()
            self.recovered = True
            log.info(
                "aggregator recovered",
                records=restored,
                windows=len(self.windows),
                topic=s.aggregates_topic,
                **{f"recovered_{k}": v for k, v in self.windows.recovered.items() if k != "restored"},
            )
            consumer_options = {
                k: v for k, v in self.profile.consumer.items() if k not in ("session_timeout_ms",)
            }
            consumer = AIOKafkaConsumer(
                *self.topics,
                bootstrap_servers=s.bootstrap_servers,
                group_id=s.aggregate_group_id,
                enable_auto_commit=False,
                metadata_max_age_ms=5000,
                **consumer_options,
                **self.security,
            )
            producer = AIOKafkaProducer(
                bootstrap_servers=s.bootstrap_servers, linger_ms=20, **self.profile.producer, **self.security
            )
            await producer.start()
            await consumer.start()
            log.info(
                "aggregator started",
                topics=self.topics,
                aggregates_topic=s.aggregates_topic,
                window_s=s.aggregate_window_s,
                group_id=s.aggregate_group_id,
                web_host=address[0],
                web_port=address[1],
            )
            last = last_lag = time.monotonic()
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                self.assigned = bool(consumer.assignment())
                if batch:
                    self.watchdog.events_arrived()
                for records in batch.values():
                    for record in records:
                        self.count(record.topic, record.value, record.timestamp, record.headers)
                if time.monotonic() - last_lag >= LAG_INTERVAL_S:
                    await self._measure_lag(consumer)
                    last_lag = time.monotonic()
                if time.monotonic() - last >= s.aggregate_update_s:
                    await self._publish(producer, consumer)
                    last = time.monotonic()
            await self._publish(producer, consumer)
        finally:
            self.watchdog.stop()
            self.assigned = False
            if consumer is not None:
                await consumer.stop()
            if producer is not None:
                await producer.stop()
            for helper in helpers:
                helper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*helpers)
            await runner.cleanup()
            w = self.windows
            log.info(
                "aggregator stopped",
                published=self.published,
                too_late=w.too_late,
                out_of_range=w.out_of_range,
                skipped=sum(self.skipped.values()) + w.invalid,
            )

    async def _heartbeat(self, interval_s: float = 0.5) -> None:
        while True:
            self.watchdog.beat()
            await asyncio.sleep(interval_s)

    async def _measure_lag(self, consumer: Any) -> None:
        """Records in the assigned partitions not yet received (a stalled consumer has some)."""
        try:
            lag = 0
            for tp in consumer.assignment():
                position, highwater = await consumer.position(tp), consumer.highwater(tp)
                if position is not None and highwater is not None:
                    lag += max(0, highwater - position)
        except Exception as exc:  # a rebalance or the broker away: the next round will tell
            log.debug("lag not measured", error=repr(exc))
            return
        self.lag = lag
        if lag == 0:
            self.watchdog.events_arrived()  # caught up: nothing waits, so nothing stalls

    async def _publish(self, producer: Any, consumer: Any) -> None:
        """Send every changed window, wait for the broker's acks, then commit what they count."""
        due = self.windows.due()
        if due:
            topic = self.settings.aggregates_topic
            futures = [
                await producer.send(topic, json.dumps(record).encode(), key=key.encode())
                for key, record in due
            ]
            await asyncio.gather(*futures)
            self.published += len(due)
            if self.on_publish is not None:
                self.on_publish([record for _, record in due])
            log.debug("aggregates published", records=len(due))
        self.watchdog.acked()
        if consumer.assignment():
            await consumer.commit()
        self.watchdog.committed()

    def web_app(self) -> Any:
        """``/health``, ``/ready`` and ``/metrics``, as an aiohttp application."""
        from aiohttp import web

        async def health(request: web.Request) -> web.Response:
            problems = self.watchdog.problems()
            if problems:
                return web.json_response({"status": "unhealthy", "problems": problems}, status=503)
            return web.json_response({"status": "ok"})

        async def ready(request: web.Request) -> web.Response:
            body: dict[str, Any] = {
                "ready": self.ready,
                "recovered": self.recovered,
                "assigned": self.assigned,
            }
            if not self.broker_probe.reachable:
                body["broker"] = f"unreachable: {self.broker_probe.last_error}"
            return web.json_response(body, status=200 if body["ready"] else 503)

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.registry), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/ready", ready)
        app.router.add_get("/metrics", metrics)
        return app

    async def _serve(self) -> tuple[Any, tuple[str, int]]:
        from aiohttp import web

        s = self.settings
        runner = web.AppRunner(self.web_app(), access_log=None)
        await runner.setup()
        address = await start_site(
            runner, s.aggregate_host, s.aggregate_port, "EMOTION_AGGREGATE_HOST or EMOTION_AGGREGATE_PORT"
        )
        return runner, address


class _Collector:
    """The aggregator's counters as Prometheus metrics, read from its state at each scrape."""

    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        a, w = self.aggregator, self.aggregator.windows
        read = CounterMetricFamily(
            "emotion_aggregate_records_read",
            "Records read from the output and dead-letter topics.",
            labels=["topic"],
        )
        counted = CounterMetricFamily(
            "emotion_aggregate_records_counted", "Records counted in a window.", labels=["topic"]
        )
        for kind, number in ((RESULTS, w.results_counted), (DEAD_LETTERS, w.dead_letters_counted)):
            read.add_metric([kind], a.read[kind])
            counted.add_metric([kind], number)
        yield read
        yield counted
        skipped = CounterMetricFamily(
            "emotion_aggregate_records_skipped",
            "Records not counted because they are not what the topic holds: unreadable (the codec's error "
            "kind) or a JSON object that is not a result (not_a_result).",
            labels=["reason"],
        )
        for reason, number in sorted({**a.skipped, "not_a_result": w.invalid}.items()):
            skipped.add_metric([reason], number)
        yield skipped
        yield CounterMetricFamily(
            "emotion_aggregate_out_of_range",
            "Records not counted: their own time and their record's timestamp both lie beyond "
            "EMOTION_AGGREGATE_MAX_SKEW_S / EMOTION_AGGREGATE_MAX_AGE_S of the wall clock.",
            value=w.out_of_range,
        )
        yield CounterMetricFamily(
            "emotion_aggregate_retimed",
            "Records counted at their record's timestamp because their own time was out of range.",
            value=w.retimed,
        )
        yield CounterMetricFamily(
            "emotion_aggregate_too_late",
            "Records not counted: their window is no longer retained (EMOTION_AGGREGATE_RETAIN_S).",
            value=w.too_late,
        )
        recovered = CounterMetricFamily(
            "emotion_aggregate_recovered",
            "Records read back from the aggregates topic at start, by outcome.",
            labels=["outcome"],
        )
        for outcome, number in sorted(w.recovered.items()):
            recovered.add_metric([outcome], number)
        yield recovered
        yield CounterMetricFamily(
            "emotion_aggregate_windows_published",
            "Window records acknowledged by the broker.",
            value=a.published,
        )
        yield GaugeMetricFamily(
            "emotion_aggregate_clock_seconds",
            "The windows' clock: the newest time counted (never ahead of the wall clock), Unix seconds.",
            value=w.newest,
        )
        yield GaugeMetricFamily(
            "emotion_aggregate_windows", "Windows held (open and retained).", value=len(w)
        )
        yield GaugeMetricFamily(
            "emotion_aggregate_lag", "Records waiting in the assigned partitions.", value=a.lag
        )
        yield GaugeMetricFamily("emotion_aggregate_ready", "1 while /ready answers 200.", value=int(a.ready))


def run_aggregator(settings: AggregatorSettings) -> int:
    """Run until SIGTERM or Ctrl-C; 0 after a clean stop, 1 after its watchdog stopped it."""
    aggregator = Aggregator(settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, aggregator.stop)
        await aggregator.run()

    asyncio.run(main())
    if aggregator.failure is not None:
        log.error(
            "aggregator stopped for its supervisor to restart it", reason=aggregator.failure, exit_code=1
        )
        return 1
    return 0
