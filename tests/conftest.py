"""Shared fixtures: a real broker, a tiny model, topic names and a worker in a child process.

The broker is, in order: the bootstrap address in EMOTION_TEST_BOOTSTRAP; a Kafka container
from testcontainers when a Docker engine is reachable; the embedded broker. A given cluster may
be secured: the tests' own clients and the workers they start then log in with the product's
settings from the environment (EMOTION_SECURITY_PROTOCOL, EMOTION_SASL_*, EMOTION_SSL_*).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.tiny_model import build_tiny_model

# Property-based and fuzz tests: a bounded run by default (CI); HYPOTHESIS_PROFILE=long for a
# longer search (see CONTRIBUTING.md).
hypothesis_settings.register_profile("ci", max_examples=50, deadline=None)
hypothesis_settings.register_profile("long", max_examples=2000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass(frozen=True)
class TestBroker:
    bootstrap: str
    backend: str
    kind: str
    client_options: dict = field(default_factory=dict)  # aiokafka's TLS/SASL options

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker() -> Iterator[TestBroker]:
    given = os.environ.get("EMOTION_TEST_BOOTSTRAP")
    if given:
        from emotion_stream.worker.settings import WorkerSettings

        security = WorkerSettings().security().aiokafka()
        yield TestBroker(given, os.environ.get("EMOTION_TEST_BROKER_BACKEND", "kafka"), "given", security)
        return
    if _docker_reachable():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield TestBroker(kafka.get_bootstrap_server(), "kafka", "testcontainers")
        return
    from emotion_stream.worker.broker.embedded import EmbeddedBroker

    with EmbeddedBroker() as embedded:
        yield TestBroker(embedded.bootstrap, "embedded", "embedded")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-emotion")


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str
    group: str


@pytest.fixture
def topics() -> Topics:
    suffix = uuid.uuid4().hex[:8]
    return Topics(
        f"posts-{suffix}", f"post-emotions-{suffix}", f"posts-dlq-{suffix}", f"emotion-test-{suffix}"
    )


@pytest.fixture
def worker_env(broker: TestBroker, tiny_model: Path, topics: Topics) -> dict[str, str]:
    """EMOTION_* settings for a worker on the test broker and the test's own topics."""
    return worker_settings(broker, tiny_model, topics)


def worker_settings(broker: TestBroker, tiny_model: Path, topics: Topics) -> dict[str, str]:
    return {
        "EMOTION_BROKER": broker.url,
        "EMOTION_BROKER_BACKEND": broker.backend,
        "EMOTION_MODEL": str(tiny_model),
        "EMOTION_INPUT_TOPIC": topics.input,
        "EMOTION_OUTPUT_TOPIC": topics.output,
        "EMOTION_DLQ_TOPIC": topics.dlq,
        "EMOTION_GROUP_ID": topics.group,
        "EMOTION_LOG_FORMAT": "console",
        "EMOTION_TORCH_THREADS": "1",
        "EMOTION_AGGREGATE_PORT": "0",  # tests run side by side: never the fixed default
    }
