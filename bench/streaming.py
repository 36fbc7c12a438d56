"""Measuring a worker through the broker: throughput over a whole stream, and latency per post.

The broker and the load generator (the producer of posts and the reader of results) share
the machine with the worker under test only because there is no second machine here. They
run at a lower CPU priority (nice 10), so the worker's model threads are not preempted by
them as they would not be on a machine of their own; they still get every cycle the worker
leaves idle. The load generator runs in a child process for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

from emotion_stream.worker.broker.clients import follow, produce
from emotion_stream.worker.broker.embedded import EmbeddedBroker
from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.cli.worker_process import WorkerProcess
from emotion_stream.worker.pacing import FetchPacer

# The embedded broker holds every fetch for its full wait: a throughput reader polls it at
# this interval (until the last results of a burst, see _NEAR_THE_END).
_THROUGHPUT_FETCH_WAIT_MS = 100

_NEAR_THE_END = 512
"""Results still to come when a throughput reader goes back to short fetches: two of the
worker's batches, about 0.4 s of fetches every 10 ms at 1,200 posts/s."""

INFRASTRUCTURE_NICE = 10
"""CPU priority of the broker and the load generator, relative to the worker under test."""


def _lower_priority() -> None:
    os.nice(INFRASTRUCTURE_NICE)


@dataclass
class StreamRun:
    posts: int
    seconds: float
    latencies_ms: list[float]
    received_s: list[float] = field(default_factory=list)
    """When each result came, in seconds from the first send, in order."""

    @property
    def rate(self) -> float:
        return self.posts / self.seconds if self.seconds else 0.0

    @property
    def steady_rate(self) -> float:
        """Results per second once the first came: the results after the first fetch that
        brought any, over the time from it to the last. :attr:`rate` also holds what a burst
        pays once before its first result, the first posts' way through the broker and the
        worker's first batch through the model (about 0.2-0.3 s: 3 % of a 10,000-post burst)."""
        if len(self.received_s) < 2:
            return self.rate
        first = self.received_s[0]
        later = [t for t in self.received_s if t > first + 0.005]  # after the first fetch's results
        span = self.received_s[-1] - first
        return len(later) / span if later and span > 0 else self.rate

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def as_posts(texts: Sequence[str], prefix: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "text": t}).encode())
        for i, t in enumerate(texts)
    ]


def _processed_at(value: bytes) -> float:
    return datetime.fromisoformat(json.loads(value)["processed_at"].replace("Z", "+00:00")).timestamp()


class BenchStream:
    """An embedded broker plus one worker process (the product's, or another module's)."""

    def __init__(
        self,
        env: dict[str, str],
        module: str = "emotion_stream.worker.cli.main",
        args: Sequence[str] = ("worker",),
        log: Path | None = None,
    ) -> None:
        self.suffix = uuid.uuid4().hex[:6]
        self.topics = {
            "input": f"posts-{self.suffix}",
            "output": f"out-{self.suffix}",
            "dlq": f"dlq-{self.suffix}",
        }
        self.env = env
        self.module, self.args, self.log = module, list(args), log
        self.broker = EmbeddedBroker()
        self.worker: WorkerProcess | None = None
        self._load_generator = None  # a child process at the infrastructure's priority, started on first use

    def __enter__(self) -> BenchStream:
        self.broker.start()
        os.setpriority(os.PRIO_PROCESS, self.broker.pid, INFRASTRUCTURE_NICE)
        return self

    def start_worker(self) -> None:
        env = {
            **self.env,
            "EMOTION_BROKER": self.broker.url,
            "EMOTION_BROKER_BACKEND": "embedded",
            "EMOTION_INPUT_TOPIC": self.topics["input"],
            "EMOTION_OUTPUT_TOPIC": self.topics["output"],
            "EMOTION_DLQ_TOPIC": self.topics["dlq"],
            "EMOTION_GROUP_ID": f"bench-{self.suffix}",
            "EMOTION_LOG_LEVEL": "WARNING",
        }
        self.worker = WorkerProcess(
            env, log_path=self.log, command=[sys.executable, "-m", self.module, *self.args]
        ).start()

    def __exit__(self, *exc) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self._load_generator is not None:
            self._load_generator.terminate()
            self._load_generator.join()
        self.broker.stop()

    def _generate_load(self, function, *args):
        """Run ``function(*args)`` in the load generator's child process (one per stream)."""
        if self._load_generator is None:
            context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
            self._load_generator = context.Pool(1, initializer=_lower_priority)
        return self._load_generator.apply(function, args)

    def preload(self, posts: list[tuple[bytes, bytes]]) -> None:
        asyncio.run(produce(self.broker.bootstrap, self.topics["input"], posts, "embedded"))

    def drain_throughput(self, n: int, timeout: float) -> StreamRun:
        """Posts/s over a preloaded stream, from the results' own processing timestamps."""
        values = self._generate_load(_read_results, self.broker.bootstrap, self.topics["output"], n, timeout)
        stamps = [_processed_at(v) for v in values]
        if len(stamps) < n:
            raise RuntimeError(f"only {len(stamps)} of {n} results within {timeout:.0f}s")
        span = max(stamps) - min(stamps)
        # n results span n - 1 intervals between the first and the last.
        return StreamRun(posts=n - 1, seconds=span, latencies_ms=[])

    def paced(self, posts: list[tuple[bytes, bytes]], rate: float | None, timeout: float) -> StreamRun:
        """Send posts at ``rate`` per second (None: all at once) while reading results.

        Latency of a post = its result's receipt - its send; the run's rate = posts over the
        time from the first send to the last result.
        """
        return self._generate_load(_run_paced, self.broker.bootstrap, self.topics, posts, rate, timeout)


def _read_results(bootstrap: str, topic: str, n: int, timeout: float) -> list[bytes]:
    """The values of the first ``n`` distinct results (by key) on ``topic``."""

    async def run() -> list[bytes]:
        seen: dict[bytes, bytes] = {}

        async def reader() -> None:
            async for r in follow(
                bootstrap, [topic], backend="embedded", fetch_max_wait_ms=_THROUGHPUT_FETCH_WAIT_MS
            ):
                seen.setdefault(r.key, r.value)
                if len(seen) >= n:
                    return

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader(), timeout)
        return list(seen.values())

    return asyncio.run(run())


def _run_paced(
    bootstrap: str,
    topics: dict[str, str],
    posts: list[tuple[bytes, bytes]],
    rate: float | None,
    timeout: float,
) -> StreamRun:
    return asyncio.run(_paced(bootstrap, topics, posts, rate, timeout))


async def _paced(
    bootstrap: str,
    topics: dict[str, str],
    posts: list[tuple[bytes, bytes]],
    rate: float | None,
    timeout: float,
) -> StreamRun:
    """Send posts at ``rate`` per second (None: all at once) while reading results."""
    sent_at: dict[bytes, float] = {}
    got_at: dict[bytes, float] = {}
    done = asyncio.Event()

    # Timing each result needs short fetches; timing a burst only needs its last result,
    # and a reader polling 100 times a second takes CPU from the worker under test. Near the
    # burst's end the reader fetches every 10 ms again: a wait of its own would add to the
    # burst's time (the broker holds each fetch for its full wait).
    pacer = None
    if not rate:
        pacer = FetchPacer(profile_for("embedded").consumer["fetch_max_wait_ms"], _THROUGHPUT_FETCH_WAIT_MS)
        pacer.busy_for(timeout + 60.0)

    async def reader() -> None:
        async for r in follow(bootstrap, [topics["output"]], backend="embedded", pacer=pacer):
            if r.key in sent_at and r.key not in got_at:
                got_at[r.key] = time.time()
                if pacer is not None and len(got_at) >= len(posts) - _NEAR_THE_END:
                    pacer.idle()
                if len(got_at) >= len(posts):
                    done.set()
                    return

    # A producer lingers 5 ms to batch its sends (librdkafka's default, and Kafka's since 4.0):
    # a paced post then waits up to 5 ms in the producer, counted in its latency, and the
    # shared broker is not woken for every single post.
    linger = 5
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger, **profile_for("embedded").producer
    )
    await producer.start()
    read_task = asyncio.create_task(reader())
    await asyncio.sleep(1.0)  # the reader is assigned before the first send
    start = time.time()
    try:
        for i, (key, value) in enumerate(posts):
            delay = start + i / rate - time.time() if rate else 0
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[key] = time.time()
            await producer.send(topics["input"], key=key, value=value)
        await producer.flush()
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        read_task.cancel()
        await producer.stop()
    latencies = [(got_at[k] - sent_at[k]) * 1000 for k in got_at]
    span = (max(got_at.values()) - start) if got_at else 0.0
    received = sorted(t - start for t in got_at.values())
    return StreamRun(posts=len(got_at), seconds=span, latencies_ms=latencies, received_s=received)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
