"""Hostile input through a real worker and broker: compressed batches of every codec Kafka clients
use, integers past Python's conversion limit, oversized and malformed headers, a compressed
bomb. No message may stop the worker or block the valid posts behind it."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from emotion_stream.schemas import DeadLetter, EmotionResult
from emotion_stream.worker.cli.worker_process import WorkerProcess
from tests.integration.helpers import collect, make_posts, produce_in_order

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
TRACEPARENT = b"00-" + b"4bf92f3577b34da6a3ce929d0e0e4736" + b"-" + b"00f067aa0ba902b7" + b"-01"


def produce_compressed(broker, topic: str, compression: str, messages, max_request_size: int = 4 << 20):
    """Send ``messages`` as record batches compressed with ``compression``."""
    from aiokafka import AIOKafkaProducer

    from emotion_stream.worker.broker.profiles import profile_for

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap,
            compression_type=compression,
            max_request_size=max_request_size,
            linger_ms=50,
            **profile_for(broker.backend).producer,
            **broker.client_options,
        )
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for key, value in messages]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def _health(worker) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/health", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_every_compression_codec_and_hostile_messages_leave_the_worker_up(
    broker, topics, worker_env, tmp_path
):
    compressed = {codec: make_posts(30, prefix=codec) for codec in CODECS}
    for codec, posts in compressed.items():
        produce_compressed(broker, topics.input, codec, posts)
    huge = b"9" * 5000
    hostile = [
        (b"int-meta", b'{"id": "int-meta", "text": "hi", "metadata": {"n": ' + huge + b"}}", []),
        (b"int-id", b'{"id": ' + huge + b', "text": "hi"}', []),
        (b"int-all", huge, []),
        (b"int-text", b'{"id": "int-text", "text": ' + huge + b"}", []),
        (b"surrogate", b'{"id": "surrogate", "text": "a \\ud800 b"}', []),
        # A small post whose header alone is over the message bound.
        (
            b"big-header",
            b'{"id": "big-header", "text": "i feel calm"}',
            [("tracestate", b"k=" + b"v" * 1_200_000)],
        ),
    ]
    garbage_headers = [
        ("traceparent", b"\xff\xfe garbage"),
        ("traceparent", TRACEPARENT),
        ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),  # a second one: dropped
        ("tracestate", b"x" * 10_000),
    ]
    traced = [(b"traced", b'{"id": "traced", "text": "i feel glad"}', garbage_headers)]
    behind = make_posts(20, prefix="behind")
    produce_in_order(broker, topics.input, [*hostile, *traced, *behind])

    worker = WorkerProcess(worker_env, log_path=tmp_path / "worker.log").start()
    wanted = {k.decode() for posts in compressed.values() for k, _ in posts} | {"traced"}
    wanted |= {k.decode() for k, _ in behind}
    try:
        worker.wait_ready(timeout=90)
        seen = collect(
            broker,
            [topics.output, topics.dlq],
            lambda s: len(s[topics.output]) >= len(wanted) and len(s[topics.dlq]) >= len(hostile),
            timeout=120,
        )
        assert worker.process.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        assert _health(worker) == 200
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    results = {json.loads(r.value)["id"]: r for r in seen[topics.output]}
    assert wanted <= set(results)
    for record in seen[topics.output]:
        EmotionResult.model_validate_json(record.value)
    headers = dict(results["traced"].headers)
    assert headers["traceparent"] == TRACEPARENT
    assert "tracestate" not in headers  # 10 kB is not a tracestate anyone propagates
    assert [n for n, _ in results["traced"].headers].count("traceparent") == 1
    letters = [DeadLetter.model_validate_json(r.value) for r in seen[topics.dlq]]
    kinds = sorted(letter.error.kind for letter in letters)
    assert kinds == sorted(["invalid_post"] * 4 + ["not_utf8", "too_large"]), [
        (letter.error.kind, letter.error.message) for letter in letters
    ]
    too_large = next(letter for letter in letters if letter.error.kind == "too_large")
    assert "of headers" in too_large.error.message
    big_header_letter = next(r for r in seen[topics.dlq] if b"too_large" in r.value)
    assert all(len(value) < 1024 for _, value in big_header_letter.headers)


def test_a_compressed_bomb_is_dead_lettered_within_the_memory_bound(broker, topics, worker_env, tmp_path):
    bomb_mb = 120
    produce_compressed(
        broker,
        topics.input,
        "gzip",
        [(b"bomb", b'{"id": "bomb", "text": "' + b"a" * (bomb_mb << 20) + b'"}')],
        max_request_size=(bomb_mb + 1) << 20,
    )
    behind = make_posts(10, prefix="after-bomb")
    produce_in_order(broker, topics.input, behind)
    env = {**worker_env, "EMOTION_MAX_INFLIGHT_BYTES": str(16 << 20)}
    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        worker.wait_ready(timeout=90)
        seen = collect(
            broker,
            [topics.output, topics.dlq],
            lambda s: len(s[topics.output]) >= len(behind) and len(s[topics.dlq]) >= 1,
            timeout=120,
        )
        peak = _peak_rss_mb(worker.process.pid)
        assert worker.process.poll() is None
    finally:
        assert worker.stop() == 0, (tmp_path / "worker.log").read_text()[-3000:]
    letters = [DeadLetter.model_validate_json(r.value) for r in seen[topics.dlq]]
    assert [letter.error.kind for letter in letters] == ["undecodable"]
    assert "decompresses to more than" in letters[0].error.message
    assert {json.loads(r.value)["id"] for r in seen[topics.output]} == {k.decode() for k, _ in behind}
    # The worker alone, before the bound, held the whole decompressed batch several times over.
    assert peak < 300, f"the worker's peak memory was {peak:.0f} MiB"
