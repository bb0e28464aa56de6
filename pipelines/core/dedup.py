"""Duplicate ``event_id`` detection with bounded memory, per shard.

Producers retry, and a retried event must not count twice. Remembering every
event id forever is unbounded, so ids are kept in *generations* of event time:
generation ``g`` holds the keys of events with ``ts // window == g``, and only
the newest two generations are kept (a retry is recognised if it arrives
within one to two windows of the original, in event time). A generation that
grows past ``max_keys`` is frozen and a fresh one opened, so memory stays
bounded under any burst; the price is that a retry older than the retained
generations is applied again. Events older than the retained generations are
normally rejected as late first (choose ``window >= allowed lateness``).

Keys are the 64-bit hashes of event ids (:attr:`EventColumns.event_key`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pandas._libs import hashtable as pd_hashtable


class _Generation:
    __slots__ = ("gen", "table", "size")

    def __init__(self, gen: int, keys: npt.NDArray[np.int64] | None = None) -> None:
        self.gen = gen
        self.table = pd_hashtable.Int64HashTable(max(1024, 0 if keys is None else keys.shape[0]))
        self.size = 0
        if keys is not None and keys.shape[0]:
            self.add(keys)

    def add(self, keys: npt.NDArray[np.int64]) -> None:
        self.table.map_keys_to_values(keys, np.zeros(keys.shape[0], np.int64))
        self.size = len(self.table)

    def contains(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        return self.table.lookup(keys) >= 0


class Deduplicator:
    """Remembers recent event keys; :meth:`first_seen` filters a batch to events not seen before."""

    def __init__(self, window_ms: int, max_keys: int = 4_000_000) -> None:
        if window_ms <= 0 or max_keys <= 0:
            raise ValueError(f"window_ms and max_keys must be positive, got {window_ms}, {max_keys}")
        self.window_ms = window_ms
        self.max_keys = max_keys
        self._gens: list[_Generation] = []  # oldest first, at most 2
        self._keys_log: list[list[npt.NDArray[np.int64]]] = []  # per generation, for snapshots

    def first_seen(self, keys: npt.NDArray[np.int64], ts_ms: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Mask of events seen for the first time (also within the batch); remembers them."""
        if keys.shape[0] == 0:
            return np.zeros(0, bool)
        seen = np.zeros(keys.shape[0], bool)
        for g in self._gens:
            seen |= g.contains(keys)
        # within the batch, only the first occurrence counts
        _, first_idx = np.unique(keys, return_index=True)
        first_in_batch = np.zeros(keys.shape[0], bool)
        first_in_batch[first_idx] = True
        fresh = ~seen & first_in_batch
        if fresh.any():
            self._remember(keys[fresh], int(ts_ms[fresh].max()))
        return fresh

    def _remember(self, keys: npt.NDArray[np.int64], newest_ts: int) -> None:
        gen = newest_ts // self.window_ms
        cur = self._gens[-1] if self._gens else None
        if cur is None or gen > cur.gen or cur.size + keys.shape[0] > self.max_keys:
            self._gens.append(_Generation(max(gen, cur.gen if cur else gen)))
            self._keys_log.append([])
            if len(self._gens) > 2:
                self._gens.pop(0)
                self._keys_log.pop(0)
        self._gens[-1].add(keys)
        self._keys_log[-1].append(keys)

    def remembered(self) -> int:
        """Keys held (bounded by 2 x max_keys)."""
        return sum(g.size for g in self._gens)

    def snapshot(self) -> dict[str, Any]:
        return {
            "window_ms": self.window_ms,
            "max_keys": self.max_keys,
            "gens": [
                (g.gen, np.concatenate(log) if log else np.zeros(0, np.int64))
                for g, log in zip(self._gens, self._keys_log, strict=True)
            ],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Deduplicator:
        d = cls(int(snap["window_ms"]), int(snap["max_keys"]))
        for gen, keys in snap["gens"]:
            d._gens.append(_Generation(int(gen), keys))
            d._keys_log.append([keys])
        return d
