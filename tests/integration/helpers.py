"""Helpers for tests against a real broker: produce posts, collect outputs until a condition."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from emotion_stream.worker.broker.clients import follow, produce


def make_posts(n: int, prefix: str = "p") -> list[tuple[bytes, bytes]]:
    words = ["glad", "furious", "scared", "lonely", "amazed", "adore", "calm", "tired"]
    posts = []
    for i in range(n):
        post_id = f"{prefix}-{i:05d}"
        text = f"post {i}: i feel {words[i % len(words)]} " + "very " * (i % 13) + "today"
        posts.append((post_id.encode(), json.dumps({"id": post_id, "text": text}).encode()))
    return posts


MALFORMED: list[tuple[bytes | None, bytes, str]] = [
    (None, b"this is not json", "not_json"),
    (b"bin", b"\xff\xfe\x00garbage", "not_utf8"),
    (b"m-1", b'{"id": "m-1"}', "invalid_post"),
    (b"m-2", b'{"id": "m-2", "text": "   "}', "invalid_post"),
    (None, b'["a", "list"]', "invalid_post"),
    (b"m-3", b'{"text": "no id here"}', "invalid_post"),
    (b"m-4", b'{"id": "m-4", "text": 42}', "invalid_post"),
    (None, b'{"id": "m-5", "text": "' + b"x" * 6000 + b'"}', "invalid_post"),
]


def create_topic(bootstrap: str, topic: str, partitions: int, security: dict | None = None) -> None:
    """Create ``topic`` with ``partitions`` (the embedded broker would auto-create it with 4).
    ``security``: aiokafka's TLS/SASL options (a test broker's ``client_options``)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(security or {}))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()

    asyncio.run(run())


def produce_in_order(broker, topic: str, messages) -> None:
    """Send (key, value) or (key, value, headers) one at a time, each acknowledged before the
    next: in order, whatever their size (up to 4 MiB)."""
    from aiokafka import AIOKafkaProducer

    from emotion_stream.worker.broker.profiles import profile_for

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap,
            max_request_size=4 << 20,
            **profile_for(broker.backend).producer,
            **broker.client_options,
        )
        await producer.start()
        try:
            for key, value, *headers in messages:
                await producer.send_and_wait(topic, value, key=key, headers=headers[0] if headers else None)
        finally:
            await producer.stop()

    asyncio.run(run())


def produce_sync(broker, topic: str, messages) -> int:
    return asyncio.run(produce(broker.bootstrap, topic, messages, broker.backend, broker.client_options))


def collect(
    broker, topics: list[str], done: Callable[[dict[str, list]], bool], timeout: float
) -> dict[str, list]:
    """Read ``topics`` from the beginning until ``done(records by topic)`` or ``timeout``."""

    async def run() -> dict[str, list]:
        seen: dict[str, list] = {t: [] for t in topics}
        deadline = time.monotonic() + timeout

        async def reader() -> None:
            async for record in follow(
                broker.bootstrap, topics, backend=broker.backend, security=broker.client_options
            ):
                seen[record.topic].append(record)
                if done(seen):
                    return

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader(), max(0.1, deadline - time.monotonic()))
        return seen

    return asyncio.run(run())


def result_ids(records) -> list[str]:
    return [json.loads(r.value)["id"] for r in records]


def restart_answers_everything(broker, topics, env: dict, log_path, posts) -> None:
    """A new worker with ``env`` labels every one of ``posts`` (after the one before it failed)."""
    from emotion_stream.worker.cli.worker_process import WorkerProcess

    restarted = WorkerProcess(env, log_path=log_path).start()
    wanted = {k.decode() for k, _ in posts}
    try:
        restarted.wait_ready(timeout=90)
        seen = collect(
            broker, [topics.output], lambda s: wanted <= set(result_ids(s[topics.output])), timeout=120
        )
    finally:
        assert restarted.stop() == 0, log_path.read_text()[-3000:]
    assert wanted - set(result_ids(seen[topics.output])) == set()


def start_command(command: str, env: dict, started: str, timeout: float = 60) -> subprocess.Popen:
    """`emotion-stream COMMAND` in a child process with only ``env``'s EMOTION_* settings,
    returned once its output shows ``started``; its output lines gather in ``.output``."""
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("EMOTION_")}, **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "emotion_stream.worker.cli.main", command],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if started in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    process.output = lines  # type: ignore[attr-defined]
    if not seen.wait(timeout):
        process.kill()
        raise AssertionError(f"`emotion-stream {command}` did not start:\n" + "".join(lines)[-3000:])
    return process


def stop_command(process: subprocess.Popen, kill: bool = False) -> str:
    """SIGTERM (or SIGKILL) a :func:`start_command` child; its whole output."""
    process.kill() if kill else process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    time.sleep(0.2)  # the reader thread takes the last lines
    return "".join(process.output)  # type: ignore[attr-defined]


def explain_missing(broker, topics, missing: set[str]) -> str:
    """Where ``missing`` posts sit in the input (partition and offsets) against the group's
    committed offsets: tells a post the worker skipped from one the broker never held."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> str:
        placed: dict[int, list[int]] = {}
        ends: dict[int, int] = {}
        security = broker.client_options
        async for record in follow(
            broker.bootstrap, [topics.input], idle_timeout=3.0, backend=broker.backend, security=security
        ):
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
            if record.key is not None and record.key.decode() in missing:
                placed.setdefault(record.partition, []).append(record.offset)
        group = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id=topics.group, enable_auto_commit=False, **security
        )
        await group.start()
        try:
            committed = {p: await group.committed(TopicPartition(topics.input, p)) for p in sorted(ends)}
        finally:
            await group.stop()
        found = sum(len(v) for v in placed.values())
        lines = [f"{found} of {len(missing)} missing posts are in {topics.input}; committed: {committed}"]
        for partition, offsets in sorted(placed.items()):
            lines.append(
                f"partition {partition}: {len(offsets)} missing at offsets {min(offsets)}..{max(offsets)} "
                f"of {ends[partition]}"
            )
        return "\n".join(lines)

    return asyncio.run(run())
