"""One shard's processing step, free of Bytewax: lateness, state update, timers, stages.

The Bytewax operator (:mod:`pipelines.flow.dataflow`) only routes batches here and
snapshots the result; everything that decides *what* a user's features and
stage are lives in this pure, unit-testable class.

Event time: the shard clock is the newest event time applied; features are
computed "as of" it and silence timers fire by it. Lateness is judged per
*input partition* (Kafka partition, file): an event older than the newest event
of its own partition minus ``allowed_lateness`` is **late**: it is not applied
and becomes a dead letter with reason ``late``. Judging it against the shard
clock instead would reject a whole lagging partition during a catch-up, since
one partition is often read far ahead of another. Everything within the
lateness is applied exactly, whatever its order (see :mod:`pipelines.core.state`).

Duplicates (a producer retry re-sending an ``event_id``) are dropped before they
touch state (:mod:`pipelines.core.dedup`) and counted, not dead-lettered.

Scoring cadence: a user whose state changed is re-scored at most once per
``score_interval_ms`` of event time, which bounds model work under a burst (a
user sending 50 events a minute during a live-stream is scored once or twice,
not 50 times). Users not yet due stay *pending* and are scored by a later
activation, or by :meth:`ShardProcessor.flush` at the end of the input. A
stage change is never delayed: it is emitted at once, so transitions trigger
automation on time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.contract.events import EventColumns, Rejection, RejectReason
from pipelines.contract.time import NEVER
from pipelines.core.dedup import Deduplicator
from pipelines.core.defaults import default_playbook, default_taxonomy
from pipelines.core.features import compute_features
from pipelines.core.ledger import ActionLedger
from pipelines.core.playbook import Playbook
from pipelines.core.state import ShardState
from pipelines.core.taxonomy import Taxonomy
from pipelines.core.timers import SilenceTimers


@dataclass(frozen=True, slots=True)
class FeatureRows:
    """Users to (re-)score, with their features as of the shard clock."""

    user_id: npt.NDArray[np.object_]
    rows: npt.NDArray[np.int64]  # the users' rows in the shard state (action ledger, consent lookups)
    features: npt.NDArray[np.float32]
    stage: npt.NDArray[np.int8]
    prev_stage: npt.NDArray[np.int8]  # -1: first time this user is scored
    last_event_ms: npt.NDArray[np.int64]  # newest event of the user
    #: rows scored because their own events changed them (not a silence timer): the
    #: only rows whose event-to-score delay is a freshness measurement
    from_events: npt.NDArray[np.bool_]
    version: int  # shard clock (event-time ms): monotonic per user, the ReplacingMergeTree version
    read_at_ms: int  # wall-clock ms the newest contributing batch was read (0 for timer-only rows)
    #: rows scored by a flush without advancing state (see :meth:`ShardProcessor.flush`): the playbook
    #: grants them nothing (a grant changes state); None = no such row
    provisional: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return int(self.user_id.shape[0])


@dataclass(slots=True)
class ShardResult:
    """What one activation of a shard produced."""

    rows: FeatureRows | None
    rejects: list[Rejection] = field(default_factory=list)
    applied: int = 0
    timer_rows: int = 0
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class ShardConfig:
    taxonomy: Taxonomy = field(default_factory=default_taxonomy)
    playbook: Playbook = field(default_factory=default_playbook)
    allowed_lateness_ms: int = 6 * 3_600_000
    timer_bucket_ms: int = 3_600_000
    #: a touched user is re-scored at most once per this much event time (0 = every batch)
    score_interval_ms: int = 30_000
    #: duplicate event ids are recognised within one to two such windows of event time
    dedup_window_ms: int = 6 * 3_600_000
    #: keys per dedup generation (two are kept): bounds dedup memory per shard
    dedup_max_keys: int = 4_000_000


class ShardProcessor:
    """State, timers and stage bookkeeping of one shard."""

    def __init__(
        self,
        cfg: ShardConfig,
        state: ShardState | None = None,
        timers: SilenceTimers | None = None,
        dedup: Deduplicator | None = None,
        ledger: ActionLedger | None = None,
    ) -> None:
        self.cfg = cfg
        self.state = state or ShardState()
        self.dedup = dedup or Deduplicator(cfg.dedup_window_ms, cfg.dedup_max_keys)
        #: rows whose state changed but whose score is not yet due (cadence)
        self.pending = np.zeros(0, np.int64)
        #: newest event time seen per input partition ("source:partition"): the lateness reference
        self.partition_clock: dict[str, int] = {}
        self.timers = timers or SilenceTimers(cfg.taxonomy.silence_ms, cfg.timer_bucket_ms)
        #: per-user action history and the day's cap counters (playbooks): part of the shard state
        self.ledger = ledger or ActionLedger(cfg.playbook.action_names, cfg.playbook.rule_ids())

    # ------------------------------------------------------------------ steps

    def process(self, ev: EventColumns, clock_hint_ms: int | None = None) -> ShardResult:
        """Apply a batch of events; return the touched users' features and the dead letters.

        ``clock_hint_ms`` is the newest event time of the whole input batch (all
        shards): it moves this shard's clock even when none of its own users
        spoke, so their silence timers still fire.
        """
        st = self.state
        rejects: list[Rejection] = []
        if len(ev):
            part = f"{ev.source}:{ev.partition}"
            newest = self.partition_clock.get(part, NEVER)
            if newest != NEVER:
                late = ev.ts_ms < newest - self.cfg.allowed_lateness_ms
                if late.any():
                    detail = f"older than the partition's newest event minus {self.cfg.allowed_lateness_ms} ms"
                    rejects += ev.rejections(late, RejectReason.LATE, detail)
                    ev = ev.take(~late)
            if len(ev):
                self.partition_clock[part] = max(newest, int(ev.ts_ms.max()))
        duplicates = 0
        if len(ev):
            fresh = self.dedup.first_seen(ev.event_key, ev.ts_ms)
            duplicates = int((~fresh).sum())
            if duplicates:
                ev = ev.take(fresh)
        applied = st.apply(ev)
        if clock_hint_ms is not None and clock_hint_ms > st.clock_ms and st.n:
            st.clock_ms = clock_hint_ms
        if applied.collisions.any():
            rejects += ev.rejections(applied.collisions, RejectReason.USER_ID_COLLISION, "64-bit user key collision")
        touched = applied.rows
        self.timers.schedule(touched, st.ts["last_active_ts"][touched])
        due = self.timers.pop_due(st.clock_ms)
        changed = np.union1d(touched, self.pending) if self.pending.shape[0] else touched
        rows = self._emit(changed, due, ev.read_at_ms)
        n_applied = len(ev) - int(applied.collisions.sum())
        return ShardResult(rows, rejects, n_applied, int(due.shape[0]), duplicates)

    def flush(self) -> ShardResult:
        """Score every pending user now, cadence or not (end of input, graceful stop).

        The scores are *provisional*: written, but the users stay pending and their
        score time is not advanced, so the state Bytewax snapshots after the flush
        is the state before it. A run resumed after a graceful stop then scores
        them at their next activation exactly as an uninterrupted run would; a
        flush that advanced the state would make the resumed run's final scores
        older than the uninterrupted run's. (A pending user whose stage changed is
        committed as usual: a transition must be emitted once.)
        """
        if self.pending.shape[0] == 0:
            return ShardResult(None)
        return ShardResult(self._emit(self.pending, np.zeros(0, np.int64), 0, force=True))

    def advance(self, clock_ms: int) -> ShardResult:
        """Move the clock forward without events (idle stream) and fire due timers."""
        st = self.state
        if st.clock_ms == NEVER or clock_ms <= st.clock_ms:
            return ShardResult(None)
        st.clock_ms = clock_ms
        due = self.timers.pop_due(clock_ms)
        changed = self.pending
        return ShardResult(self._emit(changed, due, 0), timer_rows=int(due.shape[0]))

    def _emit(
        self,
        changed: npt.NDArray[np.int64],
        timer_due: npt.NDArray[np.int64],
        read_at_ms: int,
        *,
        force: bool = False,
    ) -> FeatureRows | None:
        """Rows to score now: changed users whose cadence is due (all of them if ``force``),
        and any user whose stage changed (touched or timer-fired). The rest stay pending.
        """
        st = self.state
        now = st.clock_ms
        if timer_due.shape[0]:
            timer_due = timer_due[~np.isin(timer_due, changed)]
            timer_due = timer_due[st.user_id[timer_due] != ""]  # timers of erased users hold nobody
        rows = np.concatenate([changed, timer_due]) if timer_due.shape[0] else changed
        if rows.shape[0] == 0:
            return None
        feats = compute_features(st, rows, now)
        stage = self.cfg.taxonomy.assign_stages(feats)
        prev = st.stage[rows].copy()
        keep = stage != prev
        n_changed = changed.shape[0]
        provisional = np.zeros(rows.shape[0], bool)
        if force:
            provisional[:n_changed] = ~keep[:n_changed]
            keep[:n_changed] = True
        else:
            last = st.scored_ms[changed]
            keep[:n_changed] |= (last == NEVER) | (now - last >= self.cfg.score_interval_ms)
        self.pending = changed[~keep[:n_changed] | provisional[:n_changed]]
        from_events = np.arange(rows.shape[0]) < n_changed
        if not keep.all():
            rows, feats, stage, prev = rows[keep], feats[keep], stage[keep], prev[keep]
            from_events, provisional = from_events[keep], provisional[keep]
        if rows.shape[0] == 0:
            return None
        st.stage[rows] = stage
        st.scored_ms[rows[~provisional]] = now
        last_ev = st.ts["ref_ts"][rows]  # the decay reference is the row's newest event of any type
        return FeatureRows(
            user_id=st.user_id[rows],
            rows=rows,
            features=feats,
            stage=stage,
            prev_stage=prev,
            last_event_ms=last_ev,
            from_events=from_events,
            version=int(now),
            read_at_ms=read_at_ms,
            provisional=provisional if provisional.any() else None,
        )

    def erase(self, keys: npt.NDArray[np.int64]) -> int:
        """Remove users from this shard's state (erasure); they are no longer pending either."""
        rows = self.state.lookup(keys)
        n = self.state.erase(keys)
        self.ledger.clear(rows)
        if n and self.pending.shape[0]:
            self.pending = self.pending[~np.isin(self.pending, rows[rows >= 0])]
        return n

    # ------------------------------------------------------------------ recovery

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.snapshot_arrays(),
            "timers": self.timers.snapshot(),
            "partition_clock": dict(self.partition_clock),
            "dedup": self.dedup.snapshot(),
            "pending": self.pending.copy(),
            "taxonomy": self.cfg.taxonomy.fingerprint,
            "ledger": self.ledger.snapshot(self.state.n),
        }

    @classmethod
    def restore(cls, cfg: ShardConfig, snap: dict[str, Any]) -> ShardProcessor:
        """Resume from :meth:`snapshot`, under ``cfg``'s taxonomy and playbook.

        A snapshot taken under another taxonomy holds stage codes of that
        taxonomy: every user is re-labelled from state (no transition is
        emitted: ``lifecycle rescore`` writes the new labels) and the silence
        timers are rebuilt for the new thresholds. Playbook history is mapped
        by action name, so editing a playbook keeps cooldowns.
        """
        st = ShardState.restore(snap["state"])
        timers = SilenceTimers.restore(snap["timers"])
        pb = cfg.playbook
        led = snap.get("ledger")
        ledger = ActionLedger.restore(led, pb.action_names, pb.rule_ids()) if led is not None else None
        proc = cls(cfg, st, timers, Deduplicator.restore(snap["dedup"]), ledger)
        proc.partition_clock = dict(snap["partition_clock"])
        proc.pending = snap["pending"]
        # snapshots from before taxonomies were configurable hold codes of the default one
        if snap.get("taxonomy", default_taxonomy().fingerprint) != cfg.taxonomy.fingerprint:
            proc.relabel()
        if tuple(timers.thresholds_ms) != tuple(cfg.taxonomy.silence_ms):
            proc.timers = SilenceTimers(cfg.taxonomy.silence_ms, cfg.timer_bucket_ms)
            live = np.flatnonzero(st.user_id[: st.n] != "").astype(np.int64)
            proc.timers.schedule(live, st.ts["last_active_ts"][live])
        return proc

    def relabel(self, chunk: int = 65_536) -> int:
        """Recompute every scored user's stage under the configured taxonomy (state only); return the count."""
        st = self.state
        scored = np.flatnonzero(st.stage[: st.n] >= 0).astype(np.int64)
        for a in range(0, scored.shape[0], chunk):
            rows = scored[a : a + chunk]
            st.stage[rows] = self.cfg.taxonomy.assign_stages(compute_features(st, rows, st.clock_ms))
        return int(scored.shape[0])
