"""Per-backend client settings: the one place where a broker's quirks are handled.

The embedded broker (Tansu 0.6) differs from Apache Kafka in ways that matter here
(measured on this project's machines):
- group joins are slow with Kafka's default session timeout (the first join waits half of
  it), so the session timeout and heartbeat are shortened;
- "latest" offsets are wrong after batched produces, so consumers start from the earliest
  offset and nothing relies on end offsets;
- there is no idempotent or transactional producer, so processing is at-least-once;
- a fetch is held for the full fetch wait even when data arrives sooner (measured: a
  500 ms wait gave 216 ms median latency per hop, a 20 ms wait 1 ms), so fetches wait 10 ms;
  an idle consumer then polls 100 times a second (measured: 7% of a core in the broker and
  as much in the client), so the worker stretches the wait while its model is busy.
Apache Kafka gets the client defaults, with the same at-least-once guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BrokerProfile:
    name: str
    faust: dict[str, Any] = field(default_factory=dict)
    """Faust app settings for this backend."""
    consumer: dict[str, Any] = field(default_factory=dict)
    """aiokafka consumer keyword arguments for this backend (tools, tests, benchmarks)."""
    producer: dict[str, Any] = field(default_factory=dict)
    """aiokafka producer keyword arguments for this backend."""
    busy_fetch_wait_ms: int | None = None
    """Longest fetch wait while the worker's model is busy (brokers that hold fetches)."""


_COMMON_FAUST: dict[str, Any] = {
    "processing_guarantee": "at_least_once",
    "consumer_auto_offset_reset": "earliest",
}

PROFILES: dict[str, BrokerProfile] = {
    "kafka": BrokerProfile(
        name="kafka",
        faust=dict(_COMMON_FAUST),
        consumer={"auto_offset_reset": "earliest"},
        producer={"acks": "all"},
    ),
    "embedded": BrokerProfile(
        name="embedded",
        faust={**_COMMON_FAUST, "broker_session_timeout": 6.0, "broker_heartbeat_interval": 1.0},
        consumer={
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "fetch_max_wait_ms": 10,
        },
        producer={"acks": "all", "enable_idempotence": False},
        busy_fetch_wait_ms=250,
    ),
}


def profile_for(backend: str) -> BrokerProfile:
    try:
        return PROFILES[backend]
    except KeyError:
        raise ValueError(f"unknown broker backend {backend!r}: use one of {', '.join(PROFILES)}") from None
