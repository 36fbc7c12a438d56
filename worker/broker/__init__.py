"""Broker backends: the embedded Kafka-compatible broker, and each backend's quirks."""

from worker.broker.embedded import EmbeddedBroker, EmbeddedBrokerError
from worker.broker.profiles import BrokerProfile, profile_for

__all__ = ["BrokerProfile", "EmbeddedBroker", "EmbeddedBrokerError", "profile_for"]
