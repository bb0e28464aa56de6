"""Waiting out an unavailable store: capped exponential backoff with jitter, outage bookkeeping.

The sink (:mod:`pipelines.io.store.sink`) calls :meth:`OutageGuard.call` around every insert.
While the store is unavailable - connection refused, timeouts, an overloaded or
read-only server (:func:`is_transient_failure`) - the call keeps retrying and does not
return, so the Bytewax worker blocks inside the sink. That is the backpressure: the
worker stops polling its source, so nothing more is read or buffered until the store
takes the insert (see the sink's module docstring for the memory bound).

Observability of an outage: the gauge ``lifecycle_store_up`` drops to 0 at its first
failed attempt and returns to 1 with the first success; every failed attempt that will
be retried counts in ``lifecycle_store_retries_total{table}``; one warning line when
the store goes down (the error, never credentials) and one info line when it is back,
with the outage's duration. Errors that fail the same way every time (syntax, unknown
table, type mismatch) are raised at once, and so is a transient error once the outage
has lasted ``max_outage_seconds`` (when set); both count in ``lifecycle_sink_errors_total``.

Clock, sleep and the jitter source are injected, so the schedule is testable without
waiting.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter, Gauge

from pipelines.io.store.base import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_EXPONENT = 62  # 2**62 * any positive base is far above every cap; keeps the arithmetic finite
_CREDENTIALS = re.compile(r"(?i)(\w+://)[^/@\s:]+:[^/@\s]*@|((?:password|passwd|pwd|secret)=)[^&\s]+")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between attempts while the store is unavailable, and for how long at most.

    The wait before retry ``k`` (0-based) is drawn uniformly from ``[d/2, d]`` with
    ``d = min(max_backoff_seconds, initial_backoff_seconds * 2**k)`` ("equal jitter": never
    shorter than half the backoff, so a fleet of writers does not retry in lockstep after a
    server restart, and never hammers a down server). ``max_outage_seconds = 0`` waits
    forever; a positive value gives up (raises) once an outage has lasted that long.
    """

    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0
    max_outage_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_seconds <= self.max_backoff_seconds:
            raise ValueError(
                "need 0 < initial_backoff_seconds <= max_backoff_seconds, got "
                f"{self.initial_backoff_seconds}, {self.max_backoff_seconds}"
            )
        if self.max_outage_seconds < 0:
            raise ValueError(f"max_outage_seconds must be >= 0 (0 = no limit), got {self.max_outage_seconds}")

    def backoff(self, attempt: int) -> float:
        """The capped exponential backoff before retry ``attempt`` (0-based), before jitter."""
        return min(self.max_backoff_seconds, self.initial_backoff_seconds * 2 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, u: float) -> float:
        """The wait before retry ``attempt`` for a uniform draw ``u`` in [0, 1)."""
        d = self.backoff(attempt)
        return d / 2 + u * d / 2


def is_transient_failure(err: BaseException) -> bool:
    """Whether ``err`` may succeed on retry: the store was unreachable, timed out or overloaded.

    :class:`~pipelines.io.store.base.StoreError` carries the backend's verdict (``transient``);
    a bare network error (``OSError``: connection refused/reset, timeouts) is transient too.
    """
    if isinstance(err, StoreError):
        return err.transient
    return isinstance(err, OSError)


def redact(text: str) -> str:
    """``text`` without credentials: ``scheme://user:pass@`` and ``password=...`` are masked."""
    return _CREDENTIALS.sub(lambda m: f"{m[1]}***@" if m[1] else f"{m[2]}***", text)


class OutageGuard:
    """Runs store calls, retrying transient failures with :class:`RetryPolicy` until they succeed.

    One guard per sink partition: it remembers whether the store is down (across tables and
    calls), so an outage is logged once and its duration measured from its first failure.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        up: Gauge,
        retries: Counter,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._up = up
        self._retries = retries
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self.down_since: float | None = None
        self._outage_retries = 0
        up.set(1)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def call(self, what: str, table: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried while it fails transiently; raises at once on any other failure.

        ``what`` names the operation in log lines (``insert into user_scores (1200 rows)``).
        """
        attempt = 0
        while True:
            try:
                result = fn()
            except Exception as err:
                if not is_transient_failure(err):
                    raise
                now = self._clock()
                if self.down_since is None:
                    self.down_since = now
                    self._outage_retries = 0
                    self._up.set(0)
                    log.warning(
                        "store unavailable: %s failed (%s); retrying with backoff up to %.1f s, the pipeline waits",
                        what,
                        redact(str(err)),
                        self.policy.max_backoff_seconds,
                    )
                elif self.policy.max_outage_seconds and now - self.down_since >= self.policy.max_outage_seconds:
                    limit = self.policy.max_outage_seconds
                    raise StoreError(
                        f"store unavailable for {now - self.down_since:.1f} s (limit {limit} s, "
                        f"{self._outage_retries} retries): {what} failed: {redact(str(err))}"
                    ) from err
                self._retries.labels(table=table).inc()
                self._outage_retries += 1
                self._sleep(self.policy.delay(attempt, self._rng()))
                attempt += 1
                continue
            if self.down_since is not None:
                log.info(
                    "store available again after %.1f s (%d retries); %s succeeded",
                    self._clock() - self.down_since,
                    self._outage_retries,
                    what,
                )
                self.down_since = None
                self._up.set(1)
            return result
