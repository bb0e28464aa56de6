"""Columnar per-user state for one shard: a user-key -> dense-row index plus numpy arrays.

Why columnar: per DESIGN.md, per-event Python work is the bottleneck, so every
state update is vectorised over a whole batch (``np.add.at`` / ``np.maximum.at``)
and features are computed for many rows at once. One instance per shard key.

Windowed counts are **exponentially decayed sums** with time constant tau = the
horizon (7, 30, 90 days). They are exact and independent of arrival order:
each row keeps ``S = sum_i exp((t_i - ref) / tau)`` for a per-row reference
time ``ref`` (its newest event), so the value at time ``now`` is
``S * exp((ref - now) / tau)`` whatever order the events came in. Recency,
lifetime totals and the active-day bitmap are exact as well.

This module is the only implementation of state updates: streaming, offline
training and batch scoring all apply events through :meth:`ShardState.apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pandas._libs import hashtable as pd_hashtable

from pipelines.contract.events import ACQUIRE_TYPES, EXIT_TYPES, TYPE_CODE, EventColumns
from pipelines.contract.time import DAY_MS, NEVER, day_index

HORIZON_DAYS: tuple[int, ...] = (7, 30, 90)

#: Event families counted in decayed windows. Several types may share a family.
FAMILIES: tuple[str, ...] = (
    "acquire",
    "message",
    "browse",
    "social",
    "group_join",
    "live",
    "coupon_claim",
    "coupon_redeem",
    "cart",
    "order",
    "refund",
    "checkin",
    "exit",
)
_FAMILY_OF_TYPE: dict[str, str] = {
    "register": "acquire",
    "follow": "acquire",
    "add_contact": "acquire",
    "message_read": "message",
    "message_click": "message",
    "page_view": "browse",
    "share": "social",
    "referral": "social",
    "join_group": "group_join",
    "leave_group": "exit",
    "live_watch": "live",
    "coupon_claim": "coupon_claim",
    "coupon_redeem": "coupon_redeem",
    "add_to_cart": "cart",
    "order": "order",
    "refund": "refund",
    "checkin": "checkin",
    "unfollow": "exit",
    "delete_contact": "exit",
    "unsubscribe": "exit",
}
FAMILY_OF_CODE: npt.NDArray[np.int8] = np.array([FAMILIES.index(_FAMILY_OF_TYPE[t]) for t in TYPE_CODE], dtype=np.int8)
#: Types that count as "activity" for silence: everything but explicit exits and leaving a group.
ACTIVE_CODE: npt.NDArray[np.bool_] = np.array(
    [t not in EXIT_TYPES and t != "leave_group" for t in TYPE_CODE], dtype=bool
)
_ORDER = TYPE_CODE["order"]
_REFUND = TYPE_CODE["refund"]
_CLAIM = TYPE_CODE["coupon_claim"]
_REDEEM = TYPE_CODE["coupon_redeem"]
_JOIN = TYPE_CODE["join_group"]
_LEAVE = TYPE_CODE["leave_group"]
_MESSAGE = np.array([TYPE_CODE["message_read"], TYPE_CODE["message_click"]], np.int8)
_ACQUIRE = np.array([TYPE_CODE[t] for t in sorted(ACQUIRE_TYPES)], np.int8)
_EXIT = np.array([TYPE_CODE[t] for t in sorted(EXIT_TYPES)], np.int8)
N_CHANNELS = 10

#: Timestamp columns (int64 epoch ms, NEVER when absent).
TS_COLUMNS: tuple[str, ...] = (
    "first_ts",
    "last_active_ts",
    "last_order_ts",
    "last_message_ts",
    "last_acquire_ts",
    "last_exit_ts",
    "last_join_ts",
    "last_leave_ts",
    "ref_ts",
)


#: Per-row arrays besides the timestamps (see :meth:`ShardState._alloc`).
_ROW_ARRAYS: tuple[str, ...] = (
    "user_key",
    "user_id",
    "decayed",
    "channel_30d",
    "value_decayed",
    "order_count",
    "order_value",
    "refund_value",
    "coupon_claims",
    "coupon_redeems",
    "active_bits",
    "stage",
    "scored_ms",
)


@dataclass
class Applied:
    """What :meth:`ShardState.apply` did with a batch."""

    rows: npt.NDArray[np.int64]  # unique rows touched
    collisions: npt.NDArray[np.bool_]  # per input event: user-key collision (not applied)


class ShardState:
    """Columnar state of the users of one shard.

    Rows are dense; arrays grow geometrically. Rows of erased or evicted users
    (:meth:`evict_rows`) are reused, lowest first, by the next new users, so a
    state whose users come and go stays the size of its peak instead of growing
    with every id ever seen. ``n`` is the high-water mark of rows, :attr:`users`
    the users held. ``clock_ms`` is the shard's event clock: the newest event
    time applied so far; it drives features ("now"), lateness and silence timers.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0
        self.clock_ms = NEVER
        self._index = pd_hashtable.Int64HashTable(capacity)
        #: rows free for reuse (sorted): they hold nobody (``user_id == ""``)
        self._free = np.zeros(0, np.int64)
        #: rows of evicted users not yet cleared (:meth:`retire`): nobody's, but not yet free
        self._retired = np.zeros(0, np.int64)
        #: keys unmapped from the index since it was built (the hash table cannot delete: rebuilt past a bound)
        self._dead_keys = 0
        self._alloc(capacity)

    @property
    def users(self) -> int:
        """Users held (rows in use)."""
        return self.n - int(self._free.shape[0]) - int(self._retired.shape[0])

    # ----------------------------------------------------------------- storage

    def _alloc(self, capacity: int) -> None:
        self.capacity = capacity
        self.user_key = np.zeros(capacity, np.int64)
        self.user_id = np.empty(capacity, dtype=object)
        self.ts = {name: np.full(capacity, NEVER, np.int64) for name in TS_COLUMNS}
        nf, nh = len(FAMILIES), len(HORIZON_DAYS)
        self.decayed = np.zeros((capacity, nf * nh), np.float32)  # [family * nh + horizon]
        self.channel_30d = np.zeros((capacity, N_CHANNELS), np.float32)
        self.value_decayed = np.zeros((capacity, nh), np.float32)
        self.order_count = np.zeros(capacity, np.int32)
        self.order_value = np.zeros(capacity, np.float64)
        self.refund_value = np.zeros(capacity, np.float64)
        self.coupon_claims = np.zeros(capacity, np.int32)
        self.coupon_redeems = np.zeros(capacity, np.int32)
        self.active_bits = np.zeros(capacity, np.uint64)  # bit i: active on day (last active day - i)
        self.stage = np.full(capacity, -1, np.int8)  # last emitted stage code, -1 = never scored
        self.scored_ms = np.full(capacity, NEVER, np.int64)  # shard clock at the user's last score

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        # Doubling while small; +25% past a million rows, so that growth slack stays
        # a quarter of the state at most (state bytes per user is a capacity-planning figure).
        step = self.capacity if self.capacity < (1 << 20) else self.capacity // 4
        cap = max(need, self.capacity + step)
        old = self.snapshot_arrays()
        self._alloc(cap)
        self._restore_arrays(old)

    # ----------------------------------------------------------------- index

    def rows_for(
        self, keys: npt.NDArray[np.int64], ids: npt.NDArray[np.object_], known: npt.NDArray[np.int64] | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Dense rows of ``keys``, adding unseen users. Second value flags events whose
        64-bit key collides with a different user id (they get row -1). ``known``: the
        :meth:`lookup` of ``keys`` when the caller already made it (one hash probe per event, not two).
        """
        rows = self._index.lookup(keys) if known is None else known
        new = rows < 0
        if new.any():
            new_keys, first = np.unique(keys[new], return_index=True)
            k = new_keys.shape[0]
            reused, self._free = self._free[:k], self._free[k:]
            start = self.n
            fresh = k - reused.shape[0]
            self._grow(start + fresh)
            new_rows = np.concatenate([reused, np.arange(start, start + fresh, dtype=np.int64)])
            self._index.map_keys_to_values(new_keys, new_rows)
            self.user_key[new_rows] = new_keys
            self.user_id[new_rows] = ids[new][first]
            self.n = start + fresh
            rows = self._index.lookup(keys)
        collide = self.user_id[rows] != ids
        if collide.any():
            rows = np.where(collide, -1, rows)
        return rows.astype(np.int64, copy=False), collide

    def lookup(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Rows of known keys, -1 for unknown ones."""
        return self._index.lookup(keys).astype(np.int64, copy=False)

    # ----------------------------------------------------------------- updates

    def apply(self, ev: EventColumns, known: npt.NDArray[np.int64] | None = None) -> Applied:
        """Apply a batch of (already validated, in-lateness) events. Vectorised. ``known``: as in :meth:`rows_for`."""
        if len(ev) == 0:
            return Applied(np.zeros(0, np.int64), np.zeros(0, bool))
        rows, collide = self.rows_for(ev.user_key, ev.user_id, known)
        if collide.any():
            ev = ev.take(~collide)
            rows = rows[~collide]
        ts, tc = ev.ts_ms, ev.type_code
        active = ACTIVE_CODE[tc]
        T = self.ts

        np.minimum.at(_init_min(T["first_ts"], rows), rows, ts)
        self._rebase_decay(rows, ts)

        # decayed family counts over every horizon, plus channel and value sums
        ref = T["ref_ts"][rows]
        dtd = (ts - ref).astype(np.float64) / DAY_MS  # <= 0
        nh = len(HORIZON_DAYS)
        fam = FAMILY_OF_CODE[tc].astype(np.int64)
        for h, days in enumerate(HORIZON_DAYS):
            w = np.exp(dtd / days).astype(np.float32)
            np.add.at(self.decayed, (rows, fam * nh + h), w)
            is_order = tc == _ORDER
            if is_order.any():
                np.add.at(self.value_decayed[:, h], rows[is_order], (w * ev.amount)[is_order].astype(np.float32))
            if days == 30:
                np.add.at(self.channel_30d, (rows, ev.channel_code.astype(np.int64)), w)

        # last-seen timestamps
        act_rows, act_ts = rows[active], ts[active]
        act_uniq = np.unique(act_rows)
        old_last_active = T["last_active_ts"][act_uniq].copy()
        np.maximum.at(T["last_active_ts"], act_rows, act_ts)
        self._shift_active_bits(act_uniq, old_last_active)
        _max_where(T["last_order_ts"], rows, ts, tc == _ORDER)
        _max_where(T["last_message_ts"], rows, ts, np.isin(tc, _MESSAGE))
        _max_where(T["last_acquire_ts"], rows, ts, np.isin(tc, _ACQUIRE))
        _max_where(T["last_exit_ts"], rows, ts, np.isin(tc, _EXIT))
        _max_where(T["last_join_ts"], rows, ts, tc == _JOIN)
        _max_where(T["last_leave_ts"], rows, ts, tc == _LEAVE)

        # lifetime totals (order-independent sums)
        _add_where(self.order_count, rows, 1, tc == _ORDER)
        _add_where(self.order_value, rows, ev.amount, tc == _ORDER)
        _add_where(self.refund_value, rows, ev.amount, tc == _REFUND)
        _add_where(self.coupon_claims, rows, 1, tc == _CLAIM)
        _add_where(self.coupon_redeems, rows, 1, tc == _REDEEM)

        self._mark_active_days(act_rows, act_ts)
        self.clock_ms = max(self.clock_ms, int(ts.max()))
        return Applied(np.unique(rows), collide)

    def _rebase_decay(self, rows: npt.NDArray[np.int64], ts: npt.NDArray[np.int64]) -> None:
        """Move each touched row's decay reference to its newest event, rescaling sums,
        so that every added weight is <= 1 (no float overflow, whatever the order).
        """
        ref = self.ts["ref_ts"]
        uniq, inv = np.unique(rows, return_inverse=True)
        cand = ref[uniq]
        newest = np.full(uniq.shape[0], NEVER, np.int64)
        np.maximum.at(newest, inv, ts)
        target = np.maximum(cand, newest)
        moved = target > cand
        if not moved.any():
            return
        r = uniq[moved]
        old = ref[r]
        fresh = old == NEVER
        shift = np.where(fresh, 0.0, (old - target[moved]).astype(np.float64) / DAY_MS)
        for h, days in enumerate(HORIZON_DAYS):
            f = np.exp(shift / days).astype(np.float32)
            nh = len(HORIZON_DAYS)
            self.decayed[r, h::nh] *= f[:, None]
            self.value_decayed[r, h] *= f
            if days == 30:
                self.channel_30d[r] *= f[:, None]
        ref[r] = target[moved]

    def _mark_active_days(self, rows: npt.NDArray[np.int64], ts: npt.NDArray[np.int64]) -> None:
        """Exact distinct active days over the last 64 days, as a shifting bitmap
        anchored at each row's last active day (already updated by the caller).
        """
        if rows.shape[0] == 0:
            return
        last_day = day_index(self.ts["last_active_ts"][rows])
        age = last_day - day_index(ts)
        ok = (age >= 0) & (age < 64)
        bits = np.left_shift(np.uint64(1), age[ok].astype(np.uint64))
        np.bitwise_or.at(self.active_bits, rows[ok], bits)

    def _shift_active_bits(self, rows: npt.NDArray[np.int64], old_last_active: npt.NDArray[np.int64]) -> None:
        """Re-anchor bitmaps of rows whose last active day moved forward."""
        old_day = day_index(old_last_active)
        new_day = day_index(self.ts["last_active_ts"][rows])
        d = new_day - old_day
        never = old_last_active == NEVER
        d = np.where(never, 64, d)
        big = d >= 64
        self.active_bits[rows[big]] = 0
        sm = ~big & (d > 0)
        self.active_bits[rows[sm]] <<= d[sm].astype(np.uint64)

    # ----------------------------------------------------------------- snapshots

    def _columns(self) -> dict[str, npt.NDArray[Any]]:
        """Every per-row array by snapshot name (the one list of what a row holds)."""
        cols = {name: getattr(self, name) for name in _ROW_ARRAYS}
        cols.update({"ts_" + name: self.ts[name] for name in TS_COLUMNS})
        return cols

    def snapshot_arrays(self) -> dict[str, Any]:
        """The live rows as plain arrays (pickle-friendly copies, trimmed to ``n``)."""
        n = self.n
        snap: dict[str, Any] = {"n": n, "clock_ms": self.clock_ms}
        snap.update({name: a[:n].copy() for name, a in self._columns().items() if name != "user_id"})
        # One string instead of n Python objects: pickling an object array costs ~10x more.
        # Ids never contain control characters (the decoder rejects them), so "\n" is a safe separator.
        snap["user_id"] = "\n".join(self.user_id[:n].tolist())
        return snap

    def _restore_arrays(self, snap: dict[str, Any]) -> None:
        n = int(snap["n"])
        self.n = n
        self.clock_ms = int(snap["clock_ms"])
        for name, a in self._columns().items():
            if name == "user_id":
                a[:n] = snap[name].split("\n") if n else []
            else:
                a[:n] = snap[name]

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> ShardState:
        """Rebuild a state from :meth:`snapshot_arrays` (index included)."""
        n = int(snap["n"])
        st = cls(capacity=max(1024, n))
        st._restore_arrays(snap)
        st._rebuild_index()
        return st

    def _rebuild_index(self) -> None:
        """Index of the rows in use; the others are the free list (so nothing but ``n`` rows is snapshotted)."""
        n = self.n
        live = self.user_id[:n] != ""
        rows = np.flatnonzero(live).astype(np.int64)
        self._index = pd_hashtable.Int64HashTable(max(1024, rows.shape[0]))
        if rows.shape[0]:
            self._index.map_keys_to_values(self.user_key[rows], rows)
        self._free = np.flatnonzero(~live).astype(np.int64)
        self._free = self._free[~np.isin(self._free, self._retired)]  # retired rows are freed when released
        self._dead_keys = 0

    def erase(self, keys: npt.NDArray[np.int64]) -> int:
        """Forget users entirely (PIPL erasure): clear their rows and unmap their keys.

        The rows stay allocated but hold nothing of the user; a later event of the
        same id starts a new user from scratch. Returns the number of users erased.
        """
        rows = self.lookup(keys)
        return self.evict_rows(rows[rows >= 0])

    def retire(self, rows: npt.NDArray[np.int64]) -> int:
        """Evict ``rows`` now, free them later (:meth:`release_retired`); returns how many were retired.

        Their users are gone at once (unmapped, ``user_id == ""``: no event reaches them, no timer
        evaluates them), but the rows keep their key and data until released: decisions still
        pending for them (the playbook runs after the activation's ticks) read the right user.
        """
        rows = np.unique(rows)
        rows = rows[self.user_id[rows] != ""]
        if rows.shape[0]:
            self._index.map_keys_to_values(self.user_key[rows], np.full(rows.shape[0], -1, np.int64))
            self._dead_keys += int(rows.shape[0])
            self.user_id[rows] = ""
            self._retired = np.union1d(self._retired, rows)
        return int(rows.shape[0])

    def release_retired(self) -> npt.NDArray[np.int64]:
        """Clear the retired rows and free them for reuse; returns them (the caller clears what it keeps per row)."""
        rows, self._retired = self._retired, np.zeros(0, np.int64)
        if rows.shape[0]:
            self.user_id[rows] = "x"  # (evict_rows clears rows that hold a user)
            self.evict_rows(rows, unmap=False)
        return rows

    def evict_rows(self, rows: npt.NDArray[np.int64], *, unmap: bool = True) -> int:
        """Clear ``rows`` (users in use) and free them for reuse; returns how many were cleared.

        The same as erasure (:meth:`erase`): nothing of the user stays, and a later event of
        the id starts a new user. The index is rebuilt once the keys it still holds unmapped
        exceed the users held (a hash table cannot delete), so it too stays bounded.
        """
        rows = np.unique(rows)
        rows = rows[self.user_id[rows] != ""]
        if rows.shape[0] == 0:
            return 0
        if unmap:
            self._index.map_keys_to_values(self.user_key[rows], np.full(rows.shape[0], -1, np.int64))
            self._dead_keys += int(rows.shape[0])
        for name, a in self._columns().items():
            if name.startswith("ts_") or name == "scored_ms":
                a[rows] = NEVER
            elif name == "user_id":
                a[rows] = ""
            elif name == "stage":
                a[rows] = -1
            else:
                a[rows] = 0
        self._free = np.union1d(self._free, rows)
        if self._dead_keys > max(65_536, self.users):
            self._rebuild_index()
        return int(rows.shape[0])

    def nbytes(self) -> int:
        """Bytes held by the arrays (not the index or the id strings)."""
        return int(sum(a.nbytes for a in self._columns().values()))


def _init_min(col: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Treat NEVER as +inf for a min-accumulated column, in place."""
    unset = col[rows] == NEVER
    if unset.any():
        col[rows[unset]] = np.iinfo(np.int64).max
    return col


def _max_where(
    col: npt.NDArray[Any], rows: npt.NDArray[np.int64], vals: npt.NDArray[Any], mask: npt.NDArray[np.bool_]
) -> None:
    if mask.any():
        np.maximum.at(col, rows[mask], vals[mask])


def _add_where(col: npt.NDArray[Any], rows: npt.NDArray[np.int64], vals: Any, mask: npt.NDArray[np.bool_]) -> None:
    if mask.any():
        v = vals[mask] if isinstance(vals, np.ndarray) else vals
        np.add.at(col, rows[mask], v)
