"""Everything that talks to the outside: files, Kafka, ClickHouse.

Sources hand the flow :class:`pipelines.contract.events.RawBatch` es with their positions, and
state their resume semantics in their docstrings (:mod:`files`, :mod:`kafka.source`); sinks
state their delivery semantics (:mod:`store.sink`, :mod:`kafka.sinks`). Connectors take plain
values, never the application's settings: the composition root (:mod:`pipelines.flow.runner`)
reads the settings and passes what each needs.
"""

__all__ = ["files", "kafka", "store"]
