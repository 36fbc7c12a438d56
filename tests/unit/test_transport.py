import asyncio
import inspect
import time

import pytest
from aiokafka.consumer.fetcher import Fetcher
from faust.transport.drivers import aiokafka as faust_aiokafka

from worker.broker.profiles import profile_for
from worker.transport import ConsumerThread, FetchPacer, _PacedFetcher


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


def test_aiokafka_builds_each_fetch_request_from_the_attribute_the_pacer_replaces():
    # If aiokafka renames it, the pacer silently stops working: this catches the upgrade.
    assert "self._fetch_max_wait_ms" in inspect.getsource(Fetcher._get_actions_per_node)


def test_consumer_thread_hands_the_fetcher_to_the_pacer(monkeypatch):
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._fetch_max_wait_ms = 10  # what Fetcher.__init__ stores

    async def started(self):
        self._consumer = type("StartedConsumer", (), {"_fetcher": fetcher})()

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "on_start", started)
    pacer = FetchPacer(10, 250)
    thread = ConsumerThread.__new__(ConsumerThread)
    thread.consumer = type("FaustConsumer", (), {"app": type("App", (), {"fetch_pacer": pacer})()})()
    asyncio.run(thread.on_start())
    assert isinstance(fetcher, _PacedFetcher)
    pacer.busy_for(0.2)
    assert fetcher._fetch_max_wait_ms == pacer.wait_ms() > 100
    pacer.idle()
    assert fetcher._fetch_max_wait_ms == 10


def test_only_brokers_that_hold_fetches_get_a_pacer():
    embedded, kafka = profile_for("embedded"), profile_for("kafka")
    assert embedded.busy_fetch_wait_ms > embedded.consumer["fetch_max_wait_ms"]
    assert kafka.busy_fetch_wait_ms is None  # Kafka answers a fetch as soon as data arrives
