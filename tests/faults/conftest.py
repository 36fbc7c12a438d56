"""Fault tests: a broker of their own behind a proxy they can cut."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emotion_stream.worker.broker.embedded import EmbeddedBroker, free_port
from tests.conftest import TestBroker
from tests.faults.proxy import TcpProxy


@pytest.fixture
def cuttable_broker() -> Iterator[tuple[TestBroker, TcpProxy]]:
    """An embedded broker that tells every client to connect through a proxy (which the test
    cuts): the one broker whose advertised address a test controls, whatever EMOTION_TEST_BOOTSTRAP says."""
    proxy_port = free_port()
    with EmbeddedBroker(advertised_port=proxy_port) as embedded:
        proxy = TcpProxy(proxy_port, embedded.port).start()
        try:
            yield TestBroker(f"127.0.0.1:{proxy_port}", "embedded", "embedded behind a proxy"), proxy
        finally:
            proxy.stop()
