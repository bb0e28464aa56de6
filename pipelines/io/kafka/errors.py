"""Errors of the Kafka connectors: each says what failed and where (brokers, topic, partition), never a secret."""

from __future__ import annotations


class KafkaSourceError(RuntimeError):
    """The topic cannot be read: broker unreachable, topic missing, fatal client error."""
