"""The event contract: what an interaction event is, how a batch of them is decoded, ids and time.

The ground floor: it imports nothing else of the pipeline, and everything else may import it.

What a caller may rely on:

* :func:`decode.decode_batch` never raises on bad input. Every payload of a
  :class:`events.RawBatch` becomes exactly one valid event in the returned
  :class:`events.EventColumns` or exactly one :class:`events.Rejection` with an
  enumerated :class:`events.RejectReason` and its source position (topic/file,
  partition, offset/line).
* :func:`ids.normalize_user_id` is the one user-id rule (NFC) and
  :func:`ids.hash_strings` the one stable 64-bit key: the decoder, the Kafka
  partitioner, the producers and erasure all use them, so one user is one key.
* :mod:`time` holds the units (``DAY_MS``), the ``NEVER`` sentinel, the operating
  calendar (days start at midnight UTC+8) and the injectable ``Clock`` type.
"""

__all__ = ["decode", "events", "ids", "time"]
