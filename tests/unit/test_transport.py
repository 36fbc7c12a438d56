import asyncio
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from intervaltree import IntervalTree
from structlog.testing import capture_logs

from emotion_stream.worker.broker.profiles import profile_for
from emotion_stream.worker.pacing import FetchPacer
from emotion_stream.worker.transport import (
    PINNED,
    RELIED_ON,
    Consumer,
    ConsumerThread,
    pace_fetcher,
    private_api_changes,
)


def test_pacer_waits_the_floor_when_idle_and_until_the_model_is_free_when_busy():
    pacer = FetchPacer(10, 250)
    assert pacer.wait_ms() == 10
    pacer.busy_for(0.2)
    first = pacer.wait_ms()
    assert 150 < first <= 200
    time.sleep(0.05)
    assert pacer.wait_ms() < first  # the wait shrinks as the batch's expected end nears
    pacer.busy_for(30)
    assert pacer.wait_ms() == 250  # never longer than the ceiling
    pacer.busy_for(0.001)
    assert pacer.wait_ms() == 10  # never shorter than the floor
    pacer.idle()
    assert pacer.wait_ms() == 10
    with pytest.raises(ValueError):
        FetchPacer(0, 10)
    with pytest.raises(ValueError):
        FetchPacer(20, 10)


def test_the_private_apis_the_transport_relies_on_are_the_ones_it_was_written_against():
    # Fails on any upgrade of Faust or aiokafka that changes a function worker/transport.py
    # replaces or depends on: read the new source, adapt the module, then update the digests
    # (and PINNED, and the pins in pyproject.toml).
    assert private_api_changes() == (), "\n".join(private_api_changes())
    assert set(PINNED) == {"faust-streaming", "aiokafka"} and len(RELIED_ON) == 11


def test_the_pins_in_pyproject_are_the_transports():
    from pathlib import Path

    import tomllib

    dependencies = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    for distribution, version in PINNED.items():
        assert f"{distribution}=={version}" in dependencies


def test_a_changed_private_api_is_reported_and_the_app_falls_back_to_fausts_transport(monkeypatch):
    import emotion_stream.worker.transport as transport
    from emotion_stream.schemas import ModelInfo
    from emotion_stream.worker.app import EmotionStream
    from emotion_stream.worker.processing import BatchProcessor
    from emotion_stream.worker.settings import WorkerSettings

    def transport_class():
        return type(
            EmotionStream(
                WorkerSettings(web_enabled=False), BatchProcessor(list, ModelInfo(name="m", version="1"))
            ).app.transport
        )

    assert transport_class() is transport.Transport
    private_api_changes.cache_clear()
    monkeypatch.setitem(transport.RELIED_ON, "faust.transport.consumer:Consumer._drain_messages", "0" * 16)
    try:
        changes = private_api_changes()
        assert len(changes) == 1 and "Consumer._drain_messages has changed" in changes[0]
        assert transport_class() is faust_aiokafka.Transport
    finally:
        private_api_changes.cache_clear()


def test_the_paced_fetcher_builds_each_request_with_the_pacers_wait_of_the_moment():
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._fetch_max_wait_ms = 10  # what Fetcher.__init__ stores
    seen = []
    # The original build reads the attribute into every FetchRequest; stand in for it.
    fetcher._get_actions_per_node = lambda assignment: seen.append(fetcher._fetch_max_wait_ms)
    pacer = FetchPacer(10, 250)
    pace_fetcher(fetcher, pacer)
    assert type(fetcher) is Fetcher  # no class swapped
    pacer.busy_for(0.2)
    fetcher._get_actions_per_node(None)
    pacer.idle()
    fetcher._get_actions_per_node(None)
    assert seen[0] > 100 and seen[1] == 10


def test_consumer_thread_hands_the_fetcher_to_the_pacer(monkeypatch):
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._fetch_max_wait_ms = 10
    fetcher._get_actions_per_node = lambda assignment: fetcher._fetch_max_wait_ms

    async def started(self):
        self._consumer = type("StartedConsumer", (), {"_fetcher": fetcher})()

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_start", started)
    pacer = FetchPacer(10, 250)
    thread = ConsumerThread.__new__(ConsumerThread)
    thread.consumer = type("FaustConsumer", (), {"app": type("App", (), {"fetch_pacer": pacer})()})()
    asyncio.run(thread.on_start())
    pacer.busy_for(0.2)
    assert fetcher._get_actions_per_node(None) > 100
    pacer.idle()
    assert fetcher._get_actions_per_node(None) == 10


def test_only_brokers_that_hold_fetches_get_a_pacer():
    embedded, kafka = profile_for("embedded"), profile_for("kafka")
    assert embedded.busy_fetch_wait_ms > embedded.consumer["fetch_max_wait_ms"]
    assert kafka.busy_fetch_wait_ms is None  # Kafka answers a fetch as soon as data arrives


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_bounded_decoders_read_what_kafka_clients_write_and_refuse_a_bomb(codec):
    from aiokafka import codec as kafka_codec

    from emotion_stream.worker.transport import BatchTooLarge, bounded_decoders

    encode = getattr(kafka_codec, f"{codec}_encode")
    decode = bounded_decoders(1 << 20)[f"{codec}_decode"]
    small = b'{"id": "1", "text": "i feel calm"}' * 1000
    assert decode(encode(small)) == small
    with pytest.raises(BatchTooLarge, match=r"more than|over"):
        decode(encode(b"a" * (3 << 20)))


def test_a_batch_that_cannot_be_decoded_becomes_one_marked_record_and_the_fetch_moves_past_it():
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    from emotion_stream.worker.codec import UNDECODABLE_HEADER
    from emotion_stream.worker.transport import guard_record_batches

    def batch(base: int, compression: int, values: list[bytes]) -> bytes:
        builder = DefaultRecordBatchBuilder(2, compression, 0, -1, -1, -1, 1 << 30)
        for i, value in enumerate(values):
            builder.append(i, timestamp=1_700_000_000_000, key=None, value=value, headers=[])
        raw = bytearray(builder.build())
        raw[0:8] = base.to_bytes(8, "big")  # the broker assigns the base offset
        return bytes(raw)

    guard_record_batches(1 << 20)
    data = batch(0, 0, [b"a", b"b"]) + batch(2, 1, [b"x" * (2 << 20)]) + batch(3, 3, [b"c"])
    records = PartitionRecords(TopicPartition("t", 0), MemoryRecords(data), [], 0, None, None, False, 0)
    got = list(records)
    assert [r.offset for r in got] == [0, 1, 2, 3]
    assert [r.value for r in got[:2]] == [b"a", b"b"] and got[3].value == b"c"
    marked = dict(got[2].headers)
    assert got[2].value is None and "offsets 2..2 could not be decoded" in marked[UNDECODABLE_HEADER].decode()
    assert records.next_fetch_offset == 4


@pytest.mark.parametrize("max_message_bytes", [1 << 20, 128 << 10])
def test_a_batchs_results_travel_in_record_batches_the_topics_accept(max_message_bytes):
    """The producer's record batches hold a worker batch's results for a partition (256 KiB; the
    client's default of 16 KiB cut 256 results into about ten),
    and never exceed the largest message the topics are said to accept: a broker refuses a record
    batch over the topic's max.message.bytes as a whole."""
    from emotion_stream.schemas import ModelInfo
    from emotion_stream.worker.app import RESULT_BATCH_BYTES, EmotionStream
    from emotion_stream.worker.processing import BatchProcessor
    from emotion_stream.worker.settings import WorkerSettings

    settings = WorkerSettings(web_enabled=False, max_message_bytes=max_message_bytes)
    app = EmotionStream(settings, BatchProcessor(list, ModelInfo(name="m", version="1"))).app
    assert app.conf.producer_max_batch_size == min(RESULT_BATCH_BYTES, max_message_bytes)


def _consumer_reading(subscription):
    """The worker's consumer with the bookkeeping Faust gives it and a callback that records what it
    is handed; ``subscription``: the Kafka client's (its assignment and fetch positions)."""
    consumer = Consumer.__new__(Consumer)
    consumer._read_offset = defaultdict(lambda: None)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer._gap = defaultdict(IntervalTree)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._commit_every = None
    consumer._n_acked = 0
    consumer.suspend_flow = asyncio.Event()
    consumer.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    consumer.handed_on = []

    async def callback(message):
        consumer.handed_on.append((message.partition, message.offset))

    consumer.callback = callback
    consumer._client_subscription = lambda: subscription
    return consumer


async def _fetched(partition, offsets):
    for offset in offsets:
        yield TP("posts", partition), SimpleNamespace(topic="posts", partition=partition, offset=offset)


def test_records_fetched_before_a_rebalance_moved_the_position_back_are_not_handed_on():
    """A fetch in flight across a rebalance returns its records after the seek to the committed
    offset. Handed on, they make a jump that Faust counts as a gap (done), and the posts between
    the committed offset and them were committed unread (the scale-out test lost 67 this way)."""
    tp = TP("posts", 2)

    async def scenario():
        subscription = SubscriptionState()
        subscription.assign_from_user({TopicPartition("posts", 2)})
        consumer = _consumer_reading(subscription)
        # The rebalance's seek to the committed offset, as Faust's perform_seek leaves it.
        subscription.seek(TopicPartition("posts", 2), 193)
        consumer._read_offset[tp] = consumer._committed_offset[tp] = 193
        await consumer._deliver_all(_fetched(2, range(293, 312)))  # fetched before the seek
        # The fetch from the committed offset returns 193..311 and moves the position past them.
        subscription.subscription.assignment.state_value(TopicPartition("posts", 2)).consumed_to(312)
        await consumer._deliver_all(_fetched(2, range(193, 312)))
        return consumer

    with capture_logs() as logs:
        consumer = asyncio.run(scenario())
    assert consumer.handed_on == [(2, offset) for offset in range(193, 312)]
    assert [e["records_by_partition"] for e in logs if "records_by_partition" in e] == [{2: 19}]
    consumer._acked[tp].extend(offset for _, offset in consumer.handed_on)
    assert consumer._new_offset(tp) == 312  # every offset below the commit was handed on


def test_records_of_a_partition_the_rebalance_took_away_are_not_handed_on():
    async def scenario():
        subscription = SubscriptionState()
        subscription.assign_from_user({TopicPartition("posts", 3)})
        subscription.seek(TopicPartition("posts", 3), 0)
        subscription.subscription.assignment.state_value(TopicPartition("posts", 3)).consumed_to(5)
        consumer = _consumer_reading(subscription)
        await consumer._deliver_all(_fetched(2, range(40, 45)))  # partition 2 went to another worker
        await consumer._deliver_all(_fetched(3, range(0, 5)))
        return consumer

    assert asyncio.run(scenario()).handed_on == [(3, offset) for offset in range(5)]


async def test_a_reader_given_a_pacer_asks_it_for_the_wait_of_each_fetch(monkeypatch):
    """What the benchmark's reader relies on to stop its own fetch wait from adding to a
    burst's end: ``follow`` with a pacer builds each fetch with the pacer's wait of the moment."""
    from emotion_stream.worker.broker import clients

    waits: list[int] = []

    class Client:
        def __init__(self, *topics, **settings) -> None:
            self._fetcher = SimpleNamespace(_fetch_max_wait_ms=settings["fetch_max_wait_ms"])
            self._fetcher._get_actions_per_node = lambda assignment: waits.append(
                self._fetcher._fetch_max_wait_ms
            )
            self.offset = 0

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def getmany(self, timeout_ms: int, max_records: int) -> dict:
            self._fetcher._get_actions_per_node(None)  # as the client's fetch loop does per request
            self.offset += 1
            return {"tp": [SimpleNamespace(offset=self.offset, timestamp=self.offset)]}

    monkeypatch.setattr(clients, "AIOKafkaConsumer", Client)
    pacer = FetchPacer(10, 100)
    pacer.busy_for(60)
    got = 0
    async for _ in clients.follow("b:9092", ["t"], backend="embedded", pacer=pacer):
        got += 1
        if got == 2:
            pacer.idle()  # near the end: short fetches
        if got == 4:
            break
    assert waits == [100, 100, 10, 10]
