"""Memory bounds of a shard's user state: the new-user rate guard and the eviction of long-churned users.

Without them a shard's state only grows: every user id ever seen keeps a row (and a place
in every snapshot), so a flood of random ids grows the process until it dies. Two bounds,
both decided in event time, never by wall time or batch sizes:

* **New-user rate guard** (:meth:`Retention.admit`). At most ``max_new_users_per_second``
  users new to the shard are admitted per second of *event time*; the events of the
  users beyond it are dead letters (``new_user_rate``). A user's second is the time of
  their first event in what is applied; users are counted in the order events are applied:
  tick by tick, and within a tick in its canonical order (time, then event id,
  :mod:`pipelines.core.shard`). Each tick's events are applied at once when it closes, so
  who is admitted does not depend on how the input was cut into batches. (A tick applied
  early in parts, by provisional scoring or at the end of an input, counts its parts in the
  order they were applied.) Counters are kept for the seconds a still-valid event can be
  dated in (the allowed lateness and one tick behind the last closed tick); an event older
  than that counts in the oldest kept second. It runs before duplicate detection, so refused
  events are not remembered there either (a retry of one asks again). The guard holds a flood's growth to
  ``max_new_users_per_second`` rows per second of event time per shard, whatever its rate.
* **Eviction** (:meth:`Retention.on_tick`). Once per day of event time (at the first tick
  closed in a new day, before that tick's events are applied) every user whose committed
  stage is ``churned`` and whose newest event is older than ``churned_retention_ms`` is
  evicted: gone at once (no event reaches them, no timer evaluates them), their row cleared
  with their action history and reused by new users from the next activation on
  (:meth:`Retention.release`: the playbook decides after an activation's ticks, so a row must
  not change hands while a decision for it is pending). Their last row stays in the store;
  a later event of theirs starts them anew, as a new user. Users applied early and not yet
  evaluated at a closed tick are kept.

Both are part of the shard's state and snapshot (:meth:`Retention.snapshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.contract.events import EventColumns, Rejection, RejectReason
from pipelines.contract.time import DAY_MS, NEVER

if TYPE_CHECKING:
    import numpy.typing as npt

    from pipelines.core.ledger import ActionLedger
    from pipelines.core.state import ShardState


@dataclass(frozen=True, slots=True)
class MemoryBounds:
    """The settings of :class:`Retention` (0 = that bound is off)."""

    #: users new to the shard admitted per second of event time; the rest are dead letters ``new_user_rate``
    max_new_users_per_second: int = 0
    #: churned users whose newest event is this old (event time) are evicted from state
    churned_retention_ms: int = 0

    def __post_init__(self) -> None:
        if self.max_new_users_per_second < 0 or self.churned_retention_ms < 0:
            raise ValueError(f"memory bounds must be >= 0 (0 = off), got {self}")


class Retention:
    """The rate guard's per-second counters and the eviction sweep of one shard (module docstring)."""

    def __init__(self, bounds: MemoryBounds, horizon_ms: int) -> None:
        self.bounds = bounds
        #: how far behind the last closed tick an event may still be dated (lateness plus one tick)
        self.horizon_ms = horizon_ms
        #: event-time second -> new users admitted in it
        self.admitted: dict[int, int] = {}
        #: seconds before this fold into it (their counters are dropped)
        self.floor_s = np.iinfo(np.int64).min
        #: event-time day of the last eviction sweep
        self.swept_day = NEVER
        #: users evicted since the last :meth:`take_evicted`
        self.evicted = 0

    def admit(
        self, ev: EventColumns, state: ShardState
    ) -> tuple[EventColumns, list[Rejection], npt.NDArray[np.int64] | None]:
        """The events to apply (known users, admitted new ones), the dead letters of the rest, and the
        state's rows of the events to apply (-1: new; None when the guard is off), so that applying
        them probes the index no second time.
        """
        limit = self.bounds.max_new_users_per_second
        if limit <= 0 or not len(ev):
            return ev, [], None
        rows = state.lookup(ev.user_key)
        new = rows < 0
        if not new.any():
            return ev, [], rows
        keys, first = np.unique(ev.user_key[new], return_index=True)
        sec = np.maximum(ev.ts_ms[new][first] // 1000, self.floor_s)
        order = np.lexsort((first, sec))  # by second, then by first appearance (the applied order)
        keys, sec = keys[order], sec[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sec)) + 1]
        sizes = np.diff(np.r_[starts, sec.shape[0]])
        group = np.repeat(np.arange(starts.shape[0]), sizes)
        rank = np.arange(sec.shape[0]) - starts[group]
        room = np.array([max(0, limit - self.admitted.get(int(s), 0)) for s in sec[starts]], np.int64)
        for s, r, k in zip(sec[starts].tolist(), room.tolist(), sizes.tolist(), strict=True):
            self.admitted[s] = self.admitted.get(s, 0) + min(r, k)
        refused = keys[rank >= room[group]]
        if not refused.shape[0]:
            return ev, [], rows
        out = np.isin(ev.user_key, refused) & new
        detail = f"more than {limit} new users in one second of event time in this shard"
        return ev.take(~out), ev.rejections(out, RejectReason.NEW_USER_RATE, detail), rows[~out]

    def on_tick(
        self,
        t: int,
        st: ShardState,
        touched: npt.NDArray[np.int64],
        stages: tuple[str, ...],
    ) -> None:
        """At the close of tick ``t``: drop counters out of the horizon; once per event-time day, evict.

        ``touched``: rows applied early and not yet evaluated at a closed tick (never evicted);
        ``stages``: the taxonomy's stage names (its ``churned`` stage is the one evicted).
        """
        if self.admitted:
            self.floor_s = max(self.floor_s, (t - self.horizon_ms) // 1000)
            self.admitted = {s: k for s, k in self.admitted.items() if s >= self.floor_s}
        retention = self.bounds.churned_retention_ms
        day = t // DAY_MS
        if retention <= 0 or day <= self.swept_day:
            return
        self.swept_day = day
        if "churned" not in stages:
            return
        n = st.n
        old = (st.stage[:n] == stages.index("churned")) & (st.ts["ref_ts"][:n] <= t - retention)
        rows = np.flatnonzero(old & (st.user_id[:n] != "")).astype(np.int64)
        rows = rows[~np.isin(rows, touched)]  # applied, not yet evaluated: kept until their tick closes
        self.evicted += st.retire(rows)  # gone now; rows freed at the next activation (:meth:`release`)

    def release(self, st: ShardState, ledger: ActionLedger) -> None:
        """Free the rows retired so far (state and action history): call when no decision is pending.

        The playbook decides after all ticks of an activation are closed, so a row evicted at one
        tick may still have a decision pending from an earlier tick of the same activation; rows are
        therefore reused only from the next activation (or snapshot) on.
        """
        ledger.clear(st.release_retired())

    def take_evicted(self) -> int:
        """Users evicted since the last call (for the metric)."""
        n, self.evicted = self.evicted, 0
        return n

    def snapshot(self) -> dict[str, Any]:
        return {"admitted": dict(self.admitted), "floor_s": self.floor_s, "swept_day": self.swept_day}

    @classmethod
    def restore(cls, bounds: MemoryBounds, horizon_ms: int, snap: dict[str, Any] | None) -> Retention:
        """From :meth:`snapshot`; ``None`` (a snapshot from before the bounds): fresh counters."""
        r = cls(bounds, horizon_ms)
        if snap is not None:
            r.admitted = {int(s): int(k) for s, k in snap["admitted"].items()}
            r.floor_s = int(snap["floor_s"])
            r.swept_day = int(snap["swept_day"])
        return r

