"""Plain Kafka clients behind `produce`, `consume` and the demo.

The worker itself never uses them (it reads and writes through Faust). The tests and the
benchmarks feed and read their topics through the same functions, so the commands a user
types are the ones that are tested.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.codec import Unreadable, read_json
from emotion_stream.worker.pacing import FetchPacer


def line_to_message(line: str) -> tuple[bytes | None, bytes]:
    """A line of `produce` input as (key, value).

    A line that is a JSON object is sent as it is (keyed by its `id` when it has one), so
    malformed posts can be produced on purpose; any other line becomes a post with a new id.
    """
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            obj = read_json(stripped, what="line")
        except Unreadable:  # sent as it is: the worker dead-letters it with the reason
            obj = None
        key = obj.get("id") if isinstance(obj, dict) else None
        usable = isinstance(key, (str, int)) and not isinstance(key, bool)
        return (str(key).encode("utf-8") if usable else None), stripped.encode("utf-8")
    post_id = uuid.uuid4().hex
    return post_id.encode(), json.dumps({"id": post_id, "text": stripped}).encode("utf-8")


async def produce(
    bootstrap: Sequence[str] | str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    backend: str = "kafka",
    security: dict | None = None,
) -> int:
    """Send every message and wait until the broker acknowledged all of them."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, **profile_for(backend).producer, **(security or {})
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in messages]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def follow(
    bootstrap: Sequence[str] | str,
    topics: Sequence[str],
    *,
    idle_timeout: float | None = None,
    backend: str = "kafka",
    security: dict | None = None,
    from_beginning: bool = True,
    fetch_max_wait_ms: int | None = None,
    pacer: FetchPacer | None = None,
) -> AsyncIterator[ConsumerRecord]:
    """Yield records of ``topics`` as they arrive; stop after ``idle_timeout`` seconds of silence.

    No consumer group: a reader never moves the worker's offsets or anyone else's.
    ``fetch_max_wait_ms`` overrides the backend's fetch wait (a reader that can take its
    results in larger, later chunks polls a broker that holds fetches less often); with a
    ``pacer``, each fetch asks it for the wait of the moment instead (a reader that knows when
    it needs records sooner, as the benchmarks' does near the end of a burst).
    """
    settings = dict(profile_for(backend).consumer)
    if pacer is not None:
        fetch_max_wait_ms = pacer.ceiling_ms
    if fetch_max_wait_ms is not None:
        settings["fetch_max_wait_ms"] = fetch_max_wait_ms
    settings.pop("session_timeout_ms", None)
    settings.pop("heartbeat_interval_ms", None)
    if not from_beginning and backend != "embedded":
        settings["auto_offset_reset"] = "latest"
    # Short metadata age: topics that do not exist yet are picked up within a second.
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        metadata_max_age_ms=1000,
        **settings,
        **(security or {}),
    )
    await consumer.start()
    if pacer is not None:
        from emotion_stream.worker.transport import pace_fetcher, private_api_changes  # imports Faust

        if not private_api_changes():  # else the fixed wait: the client's internals moved
            pace_fetcher(consumer._fetcher, pacer)
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int((idle_timeout or 1.0) * 1000), max_records=500)
            records = [r for rs in batch.values() for r in rs]
            if not records and idle_timeout is not None:
                return
            for record in sorted(records, key=lambda r: r.timestamp):
                yield record
    finally:
        await consumer.stop()
