"""The ClickHouse store: one small interface, two backends, numbered migrations, the batching sink.

* :mod:`base`: :class:`base.Store`. ``insert`` returns only once the block is committed and
  raises otherwise; a retried block carries the same deduplication token, and replayed rows
  carry the same ``version``, so the tables collapse repeats under ``FINAL``.
* :mod:`chdb` (embedded, one process per data directory) and :mod:`http` (a ClickHouse server
  through clickhouse-connect); :mod:`url` opens the one a URL names.
* :mod:`migrations`: numbered ``.sql`` files with checksums, recorded in ``schema_migrations``.
* :mod:`sink`: the Bytewax sink that buffers rows and writes them before each epoch commits;
  :mod:`retry`: how it waits out an unavailable store (capped, jittered backoff: backpressure).
"""

__all__ = ["base", "chdb", "http", "migrations", "retry", "sink", "url"]
