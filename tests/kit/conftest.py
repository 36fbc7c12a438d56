"""The example below runs here against this suite's broker; in your suite, `kafka_bootstrap` is
your own fixture (the README shows one with testcontainers)."""

import pytest


@pytest.fixture
def kafka_bootstrap(broker, monkeypatch) -> str:
    monkeypatch.setenv("EMOTION_BROKER_BACKEND", broker.backend)  # the embedded broker's quirks, if it is one
    return broker.bootstrap
