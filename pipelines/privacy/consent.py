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
from pipelines.privacy.erasure import no_marketing_users, opted_out_users

log = logging.getLogger(__name__)


class ConsentFilter:
    """Drops the events of opted-out users; refreshed from the store."""

    def __init__(self, store: Store, *, refresh_seconds: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._refresh = refresh_seconds
        self._clock = clock
        self._keys: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._no_marketing: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._loaded_at = -float("inf")

    def _reload(self) -> None:
        try:
            users = opted_out_users(self._store)
            quiet = no_marketing_users(self._store)
        except Exception as err:  # keep the last known list: never score an opted-out user by accident
            log.warning("consent list not refreshed (%s); keeping %d opted-out users", err, self._keys.shape[0])
            return
        self._keys = _sorted_keys(users)
        self._no_marketing = _sorted_keys(quiet)
        self._loaded_at = self._clock()

    def _refresh_if_due(self) -> None:
        if self._clock() - self._loaded_at >= self._refresh:
            self._reload()

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
