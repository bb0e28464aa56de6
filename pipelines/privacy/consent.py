"""Consent (PIPL Art. 24): opted-out users are not scored or written; others may refuse marketing.

The opt-out list lives in the store's ``consent`` table (``lifecycle consent``).
:class:`ConsentFilter` holds the opted-out users' 64-bit keys and drops their
events right after decoding, before they reach state, scores or the store. It
re-reads the table every ``refresh_seconds`` of wall time, so an opt-out takes
effect in a running pipeline within that delay. Dropped events are counted
(``lifecycle_events_opted_out_total``), not dead-lettered: they are valid events.
Users who accept scoring but refuse marketing (``lifecycle consent --no-marketing``)
are scored; :meth:`ConsentFilter.marketing_ok` tells the playbook step, whose
rules read it as ``marketing_consent``.

It fails closed: until the list has been read once, no event passes. The first
call waits, retrying with backoff (``lifecycle_consent_loaded`` is 0 and a warning
is logged meanwhile); the batch is not committed while it waits, so nothing is
lost. A later refresh that fails keeps the last list read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from pipelines.contract.events import EventColumns
from pipelines.contract.ids import hash_strings
from pipelines.io.store.base import Store
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.privacy.erasure import no_marketing_users, opted_out_users

log = logging.getLogger(__name__)


class ConsentFilter:
    """Drops the events of opted-out users; refreshed from the store."""

    def __init__(
        self,
        store: Store,
        *,
        refresh_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        metrics: PipelineMetrics | None = None,
        max_wait_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self._refresh = refresh_seconds
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self._max_wait = max_wait_seconds
        self._keys: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._no_marketing: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._loaded_at = -float("inf")

    @property
    def loaded(self) -> bool:
        return self._loaded_at != -float("inf")

    def _reload(self) -> Exception | None:
        try:
            users = opted_out_users(self._store)
            quiet = no_marketing_users(self._store)
        except Exception as err:  # keep the last known list: never score an opted-out user by accident
            if self.loaded:
                log.warning("consent list not refreshed (%s); keeping %d opted-out users", err, self._keys.shape[0])
            return err
        self._keys = _sorted_keys(users)
        self._no_marketing = _sorted_keys(quiet)
        self._loaded_at = self._clock()
        if self._metrics is not None:
            self._metrics.consent_loaded.set(1)
        return None

    def _refresh_if_due(self) -> None:
        if self._clock() - self._loaded_at < self._refresh:
            return
        err = self._reload()
        wait = 0.5
        while err is not None and not self.loaded:  # fail closed: nothing passes before the first load
            if self._metrics is not None:
                self._metrics.consent_loaded.set(0)
            log.warning("consent list not loaded (%s); scoring nothing until it is, retrying in %.1f s", err, wait)
            self._sleep(wait)
            wait = min(wait * 2, self._max_wait)
            err = self._reload()

    def keep(self, ev: EventColumns) -> npt.NDArray[np.bool_]:
        """Mask of events whose user has not opted out."""
        self._refresh_if_due()
        if self._keys.shape[0] == 0 or len(ev) == 0:
            return np.ones(len(ev), bool)
        return ~np.isin(ev.user_key, self._keys)

    def marketing_ok(self, user_keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Mask of users who did not refuse marketing (playbooks: ``marketing_consent``)."""
        self._refresh_if_due()
        if self._no_marketing.shape[0] == 0:
            return np.ones(user_keys.shape[0], bool)
        return ~np.isin(user_keys, self._no_marketing)


def _sorted_keys(users: frozenset[str]) -> npt.NDArray[np.int64]:
    ids = np.array(sorted(users), dtype=object)
    return np.sort(hash_strings(ids)) if ids.shape[0] else np.zeros(0, np.int64)
