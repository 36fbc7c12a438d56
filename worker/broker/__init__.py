"""Broker backends: the embedded Kafka-compatible broker, and each backend's quirks."""

from emotion_stream.worker.broker.embedded import EmbeddedBroker, EmbeddedBrokerError
from emotion_stream.worker.broker.profiles import BrokerProfile, profile_for

__all__ = ["BrokerProfile", "EmbeddedBroker", "EmbeddedBrokerError", "profile_for"]
