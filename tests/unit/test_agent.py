"""The agent's pipeline, driven without a broker: stages overlap, order and acks hold."""

import asyncio
import json
import threading
import time
from types import SimpleNamespace

from emotion_stream.schemas import LABELS, ModelInfo
from emotion_stream.worker.app import EmotionStream
from emotion_stream.worker.model.api import Prediction
from emotion_stream.worker.processing import BatchProcessor
from emotion_stream.worker.settings import WorkerSettings


class Event:
    def __init__(self, offset: int, acks: list) -> None:
        value = json.dumps({"id": f"p{offset}", "text": f"post {offset}"}).encode()
        self.message = SimpleNamespace(
            topic="posts",
            partition=0,
            offset=offset,
            key=f"p{offset}".encode(),
            value=value,
            timestamp=time.time(),
            headers=[("traceparent", b"00-trace-01")],
        )
        self._acks = acks

    def ack(self) -> None:
        self._acks.append(self.message.offset)


class Producer:
    """Sends are acknowledged a little later, as a broker would."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = fail

    async def send(self, topic, key, value, partition, timestamp, headers):
        loop = asyncio.get_running_loop()
        ack = loop.create_future()
        if self.fail:
            ack.set_exception(RuntimeError("broker unreachable"))
        else:
            self.sent.append((topic, key))
            loop.call_later(0.005, ack.set_result, None)
        return ack


class Stages:
    """A prepare and a predict that log when each batch enters and leaves them."""

    def __init__(self, model_seconds: float) -> None:
        self.model_seconds = model_seconds
        self.log: list[tuple[str, str, str, float]] = []
        self.lock = threading.Lock()

    def _mark(self, stage: str, texts, edge: str) -> None:
        with self.lock:
            self.log.append((stage, texts[0], edge, time.perf_counter()))

    def prepare(self, texts):
        self._mark("prepare", texts, "start")
        time.sleep(0.01)
        self._mark("prepare", texts, "end")
        return list(texts)

    def predict(self, texts):
        self._mark("model", texts, "start")
        time.sleep(self.model_seconds)
        self._mark("model", texts, "end")
        return [
            Prediction(label=LABELS[0], score=1.0, scores={n: float(n == LABELS[0]) for n in LABELS})
            for _ in texts
        ]

    def at(self, stage: str, first_text: str, edge: str) -> float:
        return next(t for s, x, e, t in self.log if (s, x, e) == (stage, first_text, edge))


async def _run(stream: EmotionStream, events: list, until, timeout: float = 10.0) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for e in events:
        queue.put_nowait(e)
    agent = asyncio.ensure_future(stream._agent(SimpleNamespace(channel=SimpleNamespace(queue=queue))))
    try:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)


def _stream(
    stages: Stages, producer: Producer, batch_size: int = 4, prepare_ahead: bool = True
) -> EmotionStream:
    settings = WorkerSettings(batch_size=batch_size, batch_wait_ms=20, web_enabled=False)
    processor = BatchProcessor(stages.predict, ModelInfo(name="m", version="1"), prepare=stages.prepare)
    stream = EmotionStream(settings, processor, prepare_ahead=prepare_ahead)
    stream.app._producer = producer
    return stream


async def test_a_full_batch_is_prepared_while_the_model_runs_the_previous_one_and_acks_stay_in_order():
    stages, producer, acks = Stages(model_seconds=0.1), Producer(), []
    stream = _stream(stages, producer)
    events = [Event(i, acks) for i in range(12)]
    await _run(stream, events, until=lambda: len(acks) == 12)
    assert acks == list(range(12))
    assert sorted(k for _, k in producer.sent) == sorted(f"p{i}".encode() for i in range(12))
    # Batches of four: the second and third are prepared while the model has the one before.
    assert stages.at("prepare", "post 4", "end") < stages.at("model", "post 0", "end")
    assert stages.at("prepare", "post 8", "end") < stages.at("model", "post 4", "end")
    # The model still takes one batch at a time, in order.
    assert stages.at("model", "post 0", "end") <= stages.at("model", "post 4", "start")
    assert stages.at("model", "post 4", "end") <= stages.at("model", "post 8", "start")


async def test_without_cpu_to_spare_the_next_batch_is_prepared_only_once_the_model_is_free():
    stages, producer, acks = Stages(model_seconds=0.1), Producer(), []
    stream = _stream(stages, producer, prepare_ahead=False)
    await _run(stream, [Event(i, acks) for i in range(12)], until=lambda: len(acks) == 12)
    assert acks == list(range(12))
    assert stages.at("prepare", "post 4", "start") >= stages.at("model", "post 0", "end")
    assert stages.at("prepare", "post 8", "start") >= stages.at("model", "post 4", "end")


async def test_a_partial_batch_waits_for_the_model_and_gathers_what_arrives_meanwhile():
    stages, producer, acks = Stages(model_seconds=0.3), Producer(), []
    stream = _stream(stages, producer, batch_size=8)
    queue_events = [Event(i, acks) for i in range(10)]

    async def feed_later(queue_put):
        await asyncio.sleep(0.1)  # the first batch of eight is in the model
        for e in queue_events[8:]:
            queue_put(e)
            await asyncio.sleep(0.05)

    queue: asyncio.Queue = asyncio.Queue()
    for e in queue_events[:8]:
        queue.put_nowait(e)
    agent = asyncio.ensure_future(stream._agent(SimpleNamespace(channel=SimpleNamespace(queue=queue))))
    feeder = asyncio.ensure_future(feed_later(queue.put_nowait))
    deadline = time.monotonic() + 10
    while len(acks) < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    agent.cancel()
    await asyncio.gather(agent, feeder, return_exceptions=True)
    assert acks == list(range(10))
    # Posts 8 and 9 arrived 50 ms apart while the model was busy: one batch, cut once it was free.
    assert [x for s, x, e, _ in stages.log if s == "model" and e == "start"] == ["post 0", "post 8"]
    assert stages.at("prepare", "post 8", "start") >= stages.at("model", "post 0", "end")


async def test_a_send_the_broker_refuses_stops_the_worker_without_acking():
    stages, producer, acks = Stages(model_seconds=0.01), Producer(fail=True), []
    stream = _stream(stages, producer)
    crashed = []

    async def crash(exc):
        crashed.append(exc)

    stream.app.crash = crash
    await _run(stream, [Event(i, acks) for i in range(4)], until=lambda: bool(crashed))
    assert acks == [] and len(crashed) == 1 and "broker unreachable" in str(crashed[0])


class RecordingPacer:
    def __init__(self) -> None:
        self.busy: list[float] = []

    def busy_for(self, seconds: float) -> None:
        self.busy.append(seconds)

    def idle(self) -> None:
        pass


async def test_the_fetch_waits_while_the_model_is_busy_with_the_whole_batches_already_held():
    """A fetch that comes back while the model still has whole batches gathered behind the
    current one to do brings nothing that could go in sooner: the pacer is told the model is
    busy for the posts in the model and those batches. A partial batch behind it is not counted:
    it is taken when the model is free, and posts fetched by then join it."""
    stages, producer, acks = Stages(model_seconds=0.1), Producer(), []
    stream = _stream(stages, producer)
    stream.app.fetch_pacer = pacer = RecordingPacer()
    await _run(stream, [Event(i, acks) for i in range(14)], until=lambda: len(acks) == 14)
    assert acks == list(range(14))
    # Batches of four, at 25 ms a post or more; the pacer is told 0.8 of the time. The first
    # batch has no measured speed yet. The second (posts 4-7) has 8-13 behind it: one whole
    # batch, 8 posts in all. The third (8-11) has only 12-13 behind it: its own 4 posts.
    second, third, _ = pacer.busy
    assert second >= 0.8 * 8 * 0.025
    assert third < 0.8 * 6 * 0.025
