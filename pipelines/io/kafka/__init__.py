"""Kafka: a batch source, producers, the dead-letter and transitions sinks, topic administration.

* :mod:`source`: :class:`source.KafkaBatchSource`, one Bytewax partition per Kafka partition,
  resumed exactly at the offset of the last committed epoch (no consumer-group commits), batches
  aligned in offset space so that a resumed run cuts the same batches.
* :mod:`sinks`: dead letters (original bytes and headers) and stage transitions (JSON keyed by
  user id), each acknowledged by the broker before an epoch commits.
* :mod:`producer`, :mod:`admin`: bulk producing keyed by user id, topic creation and counting.
* :mod:`url` (``kafka://`` URLs and start positions), :mod:`stop` (the graceful-stop request),
  :mod:`errors`, :mod:`clientlog` (librdkafka's log as Python log records).

Client configs are passed to librdkafka as they are; their values may be secrets and are never
logged or put into an error message (only option names).
"""

__all__ = ["admin", "clientlog", "errors", "producer", "sinks", "source", "stop", "url"]
