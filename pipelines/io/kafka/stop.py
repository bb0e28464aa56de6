"""The process-wide graceful-stop request that every Kafka source polls.

Set from a signal handler (``lifecycle run`` on SIGTERM); each partition then ends at its next poll
with its snapshot at the last record it handed on (see :mod:`pipelines.io.kafka.source`).
"""

from __future__ import annotations

import threading

#: Process-wide graceful-stop request (:func:`request_stop`): the default ``stop`` of every source.
STOP_REQUESTED = threading.Event()


def request_stop() -> None:
    """Ask every Kafka source of this process to end its partitions at their next poll (graceful stop).

    Safe to call from a signal handler: it only sets an event. Each partition then
    raises ``StopIteration`` with its snapshot at the last record it handed on, so
    the flow reaches end of input, flushes and commits a final epoch, and a run
    resumed from the recovery store continues at exactly that offset.
    """
    STOP_REQUESTED.set()
