"""``kafka://`` URLs and start positions: the parsers that settings validate with.

Pure parsing (no client is created), so :mod:`pipelines.settings` can reject a bad URL or start
position at start-up with one line, before anything connects.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
)

from pipelines.contract.time import MIN_EPOCH_MS


def parse_kafka_url(url: str) -> tuple[str, str]:
    """``kafka://HOST:PORT[,HOST:PORT]/TOPIC`` -> (bootstrap servers, topic)."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ValueError(f"not a kafka:// URL: {url!r}")
    bootstrap = parts.netloc
    topic = parts.path.lstrip("/")
    if not bootstrap or not topic or "/" in topic or parts.query or parts.fragment:
        raise ValueError(f"expected kafka://HOST:PORT[,HOST:PORT]/TOPIC, got {url!r}")
    for hostport in bootstrap.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad broker address {hostport!r} in {url!r} (expected HOST:PORT)")
    return bootstrap, topic


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: Epoch-ms start values below this (2000-01-01) are taken for a unit mistake (seconds), not a time.
_MIN_START_MS = MIN_EPOCH_MS


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a partition without resume state starts: a logical offset, or the first record at a time."""

    #: ``OFFSET_BEGINNING`` (earliest) or ``OFFSET_END`` (latest; also the fallback of a time start)
    offset: int
    #: start at the first record whose Kafka timestamp is >= this (epoch ms); None: start at ``offset``
    timestamp_ms: int | None = None

    def __str__(self) -> str:
        if self.timestamp_ms is None:
            return _labels(self.offset)
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")


def parse_kafka_start(value: str) -> StartPosition:
    """``earliest`` | ``latest`` | an ISO-8601 time with offset | epoch milliseconds -> :class:`StartPosition`.

    ``2026-10-01T00:00:00+08:00``, ``2026-09-30T16:00:00Z`` and ``1790784000000`` are the same start.
    A time without an offset is refused (whose midnight?), and so are epoch values before 2000
    (seconds where milliseconds are meant).
    """
    text = value.strip()
    if text.lower() == "earliest":
        return StartPosition(OFFSET_BEGINNING)
    if text.lower() == "latest":
        return StartPosition(OFFSET_END)
    if text.isdigit():
        ms = int(text)
        if ms < _MIN_START_MS:
            raise ValueError(
                f"kafka start {value!r}: epoch values are milliseconds and must be >= {_MIN_START_MS} (2000-01-01)"
            )
        return StartPosition(OFFSET_END, ms)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"kafka start must be 'earliest', 'latest', an ISO-8601 time with offset "
            f"(e.g. 2026-10-01T00:00:00+08:00) or epoch milliseconds, got {value!r}"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"kafka start {value!r} has no UTC offset: add one, e.g. {text}Z or {text}+08:00")
    return StartPosition(OFFSET_END, max(0, (when - _EPOCH) // timedelta(milliseconds=1)))


def _labels(offset: int) -> str:
    return {OFFSET_BEGINNING: "earliest", OFFSET_END: "latest"}.get(offset, str(offset))
