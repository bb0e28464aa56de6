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

Erased users (``lifecycle forget``) are dropped the same way: the store keeps only a
keyed HMAC of their ids (``suppressed``), so each user's id is HMAC'd once, the first
time the filter sees their key (and again whenever the list changes), and the keys
found are dropped from then on. Without the key (``LIFECYCLE_ERASURE_SALT``) nothing
can be matched: the runner refuses to start against a store that has erasures.

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
from pipelines.privacy.erasure import no_marketing_users, opted_out_users, suppressed_hashes, user_hash

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
        salt: bytes = b"",
    ) -> None:
        self._store = store
        self._refresh = refresh_seconds
        self._clock = clock
        self._sleep = sleep
        self._metrics = metrics
        self._max_wait = max_wait_seconds
        self._salt = salt
        self._suppressed: frozenset[str] = frozenset()
        #: user keys whose HMAC was checked against ``_suppressed`` (sorted), and those found suppressed
        self._checked: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._suppressed_keys: npt.NDArray[np.int64] = np.zeros(0, np.int64)
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
            erased = suppressed_hashes(self._store) if self._salt else frozenset()
        except Exception as err:  # keep the last known list: never score an opted-out user by accident
            if self.loaded:
                log.warning("consent list not refreshed (%s); keeping %d opted-out users", err, self._keys.shape[0])
            return err
        self._keys = _sorted_keys(users)
        self._no_marketing = _sorted_keys(quiet)
        if erased != self._suppressed:  # someone was erased or opted back in: check every user again
            self._suppressed = erased
            self._checked = np.zeros(0, np.int64)
            self._suppressed_keys = np.zeros(0, np.int64)
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
        if len(ev) == 0:
            return np.ones(0, bool)
        keep = ~np.isin(ev.user_key, self._keys) if self._keys.shape[0] else np.ones(len(ev), bool)
        if self._suppressed:
            self._check_new(ev)
            keep &= ~np.isin(ev.user_key, self._suppressed_keys)
        return keep

    def _check_new(self, ev: EventColumns) -> None:
        """HMAC the ids of users not checked yet against the erased list (once per user and list)."""
        new = np.flatnonzero(~np.isin(ev.user_key, self._checked))
        if new.shape[0] == 0:
            return
        keys, first = np.unique(ev.user_key[new], return_index=True)
        ids = ev.user_id[new[first]]
        hit = np.fromiter((user_hash(str(u), self._salt) in self._suppressed for u in ids), bool, ids.shape[0])
        self._checked = np.union1d(self._checked, keys)
        if hit.any():
            self._suppressed_keys = np.union1d(self._suppressed_keys, keys[hit])

    def marketing_ok(self, user_keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Mask of users who did not refuse marketing (playbooks: ``marketing_consent``)."""
        self._refresh_if_due()
        if self._no_marketing.shape[0] == 0:
            return np.ones(user_keys.shape[0], bool)
        return ~np.isin(user_keys, self._no_marketing)


def _sorted_keys(users: frozenset[str]) -> npt.NDArray[np.int64]:
    ids = np.array(sorted(users), dtype=object)
    return np.sort(hash_strings(ids)) if ids.shape[0] else np.zeros(0, np.int64)
