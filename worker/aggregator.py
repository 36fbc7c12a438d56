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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog

from worker.aggregation import Windows
from worker.broker.profiles import profile_for
from worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

RECOVERY_QUIET_S = 2.0
"""At start, the aggregates topic counts as read once this long passes without a record."""


class Aggregator:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.windows = Windows(
            settings.aggregate_window_s,
            settings.aggregate_grace_s,
            settings.aggregate_retain_s,
            tuple(settings.aggregate_dimensions),
        )
        self.security = settings.security().aiokafka()
        self.profile = profile_for(settings.broker_backend)
        self.published = 0
        self.skipped = 0  # records that were not JSON objects
        self._stopping = asyncio.Event()
        self.on_publish: Callable[[list[dict[str, Any]]], None] | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def recover(self) -> int:
        """Read the aggregates topic back; returns the records read."""
        from worker.broker.clients import follow

        s = self.settings
        count = 0
        async for record in follow(
            s.bootstrap_servers,
            [s.aggregates_topic],
            idle_timeout=RECOVERY_QUIET_S,
            backend=s.broker_backend,
            security=self.security,
        ):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                self.windows.restore(json.loads(record.value))
                count += 1
        return count

    def count(self, topic: str, value: bytes | None) -> None:
        try:
            message = json.loads(value or b"")
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.skipped += 1
            return
        if topic == self.settings.dlq_topic:
            self.windows.add_dead_letter(message)
        else:
            self.windows.add_result(message)

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        s = self.settings
        restored = await self.recover()
        log.info(
            "aggregator recovered", records=restored, windows=len(self.windows), topic=s.aggregates_topic
        )
        consumer_options = {
            k: v for k, v in self.profile.consumer.items() if k not in ("session_timeout_ms",)
        }
        consumer = AIOKafkaConsumer(
            s.output_topic,
            s.dlq_topic,
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
            topics=[s.output_topic, s.dlq_topic],
            aggregates_topic=s.aggregates_topic,
            window_s=s.aggregate_window_s,
            group_id=s.aggregate_group_id,
        )
        try:
            last = time.monotonic()
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=2000)
                for records in batch.values():
                    for record in records:
                        self.count(record.topic, record.value)
                if time.monotonic() - last >= s.aggregate_update_s:
                    await self._publish(producer, consumer)
                    last = time.monotonic()
            await self._publish(producer, consumer)
        finally:
            await consumer.stop()
            await producer.stop()
            log.info("aggregator stopped", published=self.published, too_late=self.windows.too_late)

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
        if consumer.assignment():
            await consumer.commit()


def run_aggregator(settings: WorkerSettings) -> int:
    """Run until SIGTERM or Ctrl-C; 0 after a clean stop."""
    aggregator = Aggregator(settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, aggregator.stop)
        await aggregator.run()

    asyncio.run(main())
    return 0
