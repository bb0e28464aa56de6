"""One shard's processing step, free of Bytewax: lateness, event-time ticks, state, timers, refresh.

The Bytewax operator (:mod:`pipelines.flow.dataflow`) only routes slices here and
snapshots the result; everything that decides *what* a user's features, stage and
scores are, and *when*, lives in this pure, unit-testable class.

Event time is the truth (``docs/event-time.md``). Results are a function of the
events alone, never of batch sizes, of how streams interleave, or of restarts:

* **Streams and frontiers.** Each input stream (a Kafka partition, the ordered
  sequence of input files, the simulator) has a *frontier*: the newest event time
  read from it so far, in the stream's own order. Every event gets, from the
  frontier of its stream just after it, a **tick**: the first boundary of the
  event-time grid (``score_interval_ms``, default 30 s) after that frontier. An
  event older than its stream's frontier minus ``allowed_lateness_ms`` is **late**:
  a dead letter, never applied.
* **Closing a tick.** Tick ``t`` closes once every stream's frontier has passed
  ``t`` (the watermark), so no event of tick ``t`` can still come. Closing applies
  the tick's events (deduplicated, in a canonical order) and evaluates, as of
  ``t``: every user touched in the tick, every user whose rule timer is due (a
  ``days_since_*`` threshold of the taxonomy) and every user whose refresh is due
  (each live user whose last evaluation is ``refresh_ms`` of event time old; churned
  users ``refresh_churned_ms``; and users the at-risk watch, :mod:`pipelines.core.watch`,
  asked to see again). Events of later ticks wait,
  unapplied, until their tick closes (their memory is bounded by how far streams
  drift apart; ``max_held_events`` forces closes beyond that).
* **Transitions.** A user's stage is the stage of their latest evaluation at a
  closed tick; a transition is a change between two such evaluations, at the tick
  it happened. A user's first transition is from none, at their first event's tick.
* **End of input.** Ticks up to the newest frontier are closed; the last, still
  open tick's events are applied and its users scored *provisionally* (rows written,
  no stage committed, no transition, no playbook grant). A later load continues the
  open tick, so loading a history in parts gives what loading it at once gives.

Duplicates (a producer retry re-sending an ``event_id``) are dropped before they
touch state (:mod:`pipelines.core.dedup`) and counted, not dead-lettered.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.contract.events import EventColumns, Rejection, RejectReason
from pipelines.contract.time import DAY_MS, NEVER
from pipelines.core.dedup import Deduplicator
from pipelines.core.defaults import default_playbook, default_taxonomy
from pipelines.core.evaluated import FeatureRows
from pipelines.core.features import compute_features
from pipelines.core.ledger import ActionLedger
from pipelines.core.playbook import Playbook
from pipelines.core.retention import MemoryBounds, Retention
from pipelines.core.state import ShardState
from pipelines.core.taxonomy import Taxonomy
from pipelines.core.timers import Timers
from pipelines.core.watch import RiskProbe, flips_ahead


@dataclass(frozen=True, slots=True)
class Slice:
    """One shard's part of a raw batch, and what the whole batch says about its stream's event time."""

    stream: str
    events: EventColumns
    #: per event: the stream's newest event time in the raw batch up to and including this event
    frontier: npt.NDArray[np.int64]
    #: newest event time of the whole raw batch (every shard's events); NEVER when it had none
    batch_max: int = NEVER
    #: the stream has nothing more to read for now (a Kafka partition at its end): it holds no tick back
    caught_up: bool = False

    @staticmethod
    def of(events: EventColumns, stream: str | None = None) -> Slice:
        """A whole batch as one slice (offline replays and tests): frontiers from the batch's own order.

        The stream defaults to the events' ``source:partition``.
        """
        stream = stream if stream is not None else f"{events.source}:{events.partition}"
        ts = events.ts_ms
        front = np.maximum.accumulate(ts) if ts.shape[0] else np.zeros(0, np.int64)
        return Slice(stream, events, front, int(ts.max()) if ts.shape[0] else NEVER)


@dataclass(slots=True)
class ShardResult:
    """What one activation of a shard produced: the rows of every tick it closed, in tick order."""

    rows: list[FeatureRows] = field(default_factory=list)
    rejects: list[Rejection] = field(default_factory=list)
    applied: int = 0
    timer_rows: int = 0
    refresh_rows: int = 0
    duplicates: int = 0
    evicted: int = 0
    ticks: int = 0


@dataclass(frozen=True, slots=True)
class ShardConfig:
    taxonomy: Taxonomy = field(default_factory=default_taxonomy)
    playbook: Playbook = field(default_factory=default_playbook)
    allowed_lateness_ms: int = 6 * 3_600_000
    timer_bucket_ms: int = 3_600_000
    #: the event-time tick: a touched user is evaluated (committed) once per tick, at its end
    score_interval_ms: int = 3_600_000
    #: every live user is re-evaluated at least once per this much event time
    refresh_ms: int = DAY_MS
    #: ... and churned users once per this much
    refresh_churned_ms: int = 7 * DAY_MS
    #: the input streams expected from the start (a tick waits for all of them); others join when seen
    streams: tuple[str, ...] = ()
    #: events waiting for their tick beyond this force the oldest tick closed (streams far apart)
    max_held_events: int = 4_000_000
    #: duplicate event ids are recognised within one to two such windows of event time
    dedup_window_ms: int = 6 * 3_600_000
    #: keys per dedup generation (two are kept): bounds dedup memory per shard
    dedup_max_keys: int = 4_000_000
    #: the new-user rate guard and the eviction of long-churned users (:mod:`pipelines.core.retention`)
    memory: MemoryBounds = field(default_factory=MemoryBounds)

    def __post_init__(self) -> None:
        if self.score_interval_ms <= 0:
            raise ValueError(f"score_interval_ms (the tick) must be positive, got {self.score_interval_ms}")
        if self.refresh_ms < self.timer_bucket_ms or self.refresh_churned_ms < self.refresh_ms:
            raise ValueError(
                f"need timer_bucket_ms <= refresh_ms <= refresh_churned_ms, got {self.timer_bucket_ms}, "
                f"{self.refresh_ms}, {self.refresh_churned_ms}"
            )


class ShardProcessor:
    """State, ticks, timers and stage bookkeeping of one shard (see the module docstring)."""

    def __init__(
        self,
        cfg: ShardConfig,
        state: ShardState | None = None,
        timers: Timers | None = None,
        dedup: Deduplicator | None = None,
        ledger: ActionLedger | None = None,
        refresh: Timers | None = None,
        probe: RiskProbe | None = None,
    ) -> None:
        self.cfg = cfg
        #: the model's probabilities, for the at-risk watch (:mod:`pipelines.core.watch`); None: no watch
        self.probe = probe
        self.state = state or ShardState()
        self.dedup = dedup or Deduplicator(cfg.dedup_window_ms, cfg.dedup_max_keys)
        self.timers = timers or Timers(cfg.taxonomy.timers, cfg.timer_bucket_ms)
        #: one entry per committed evaluation, one interval after it; entries of users evaluated again since
        #: are stale and skipped when they pop (their newer entry is still there)
        self.refresh = refresh or Timers((), cfg.timer_bucket_ms)
        #: the at-risk watch's "evaluate at the next tick" entries (never stale)
        self.watching = Timers((), cfg.timer_bucket_ms)
        #: per-user action history and the day's cap counters (playbooks): part of the shard state
        self.ledger = ledger or ActionLedger(cfg.playbook.action_names, cfg.playbook.rule_ids())
        #: newest event time read per stream: the lateness reference and the watermark's inputs
        self.frontier: dict[str, int] = dict.fromkeys(cfg.streams, NEVER)
        self.caught_up: set[str] = set()
        #: the last closed tick (event-time ms)
        self.closed_ms: int = NEVER
        #: events waiting for their tick: tick -> parts, and a heap of the ticks
        self._held: dict[int, list[EventColumns]] = {}
        self._held_heap: list[int] = []
        self._held_n = 0
        #: rows whose events were applied early (a flush, provisional scoring) and are not yet evaluated at a
        #: closed tick, and that tick
        self.touched = np.zeros(0, np.int64)
        self.touched_tick: int = NEVER
        self.retention = Retention(cfg.memory, cfg.allowed_lateness_ms + cfg.score_interval_ms)

    # ------------------------------------------------------------------ steps

    def process(self, sl: Slice | EventColumns, *, provisional: bool = False) -> ShardResult:
        """Take one slice: reject late events, hold the rest for their ticks, close every tick now complete.

        ``provisional`` (live streams): also score, provisionally, the users this slice touched in
        the still open tick, so their rows are fresh within seconds; the tick's close writes their
        committed rows after them (same ``version``: the later insert wins). It changes nothing
        that is committed (stages, transitions, grants). A bare :class:`EventColumns` is a whole
        batch of one stream (offline replays, tests).
        """
        if isinstance(sl, EventColumns):
            sl = Slice.of(sl)
        rejects: list[Rejection] = []
        ev = sl.events
        before = self.frontier.get(sl.stream, NEVER)
        if len(ev):
            front = np.maximum(sl.frontier, before)
            late = ev.ts_ms < front - self.cfg.allowed_lateness_ms
            if late.any():
                detail = f"older than the stream's newest event minus {self.cfg.allowed_lateness_ms} ms"
                rejects += ev.rejections(late, RejectReason.LATE, detail)
                ev, front = ev.take(~late), front[~late]
            self._hold(ev, front)
        self.frontier[sl.stream] = max(before, sl.batch_max)
        if sl.caught_up:
            self.caught_up.add(sl.stream)
        elif sl.batch_max != NEVER:
            self.caught_up.discard(sl.stream)
        res = self._close_through(self.watermark())
        res.rejects[:0] = rejects
        if provisional and self._held_heap:
            self._provisional(res)
        return res

    def _provisional(self, res: ShardResult) -> None:
        """Apply the open tick's waiting events now and score the users they touch, provisionally."""
        t_open = self._held_heap[0]
        touched = self._apply_early(t_open, res)
        self.touched_tick = t_open
        fresh = touched[self.state.user_id[touched] != ""]
        if fresh.shape[0]:
            res.rows.append(self._rows(fresh, t_open, from_events=fresh, commit=False, read_at_ms=0))

    def watermark(self) -> int:
        """Ticks up to here are complete: the oldest frontier of the streams that may still send events."""
        active = [f for s, f in self.frontier.items() if s not in self.caught_up]
        if active:
            return min(active)
        return max(self.frontier.values(), default=NEVER)  # every stream caught up: all has arrived

    def advance(self, clock_ms: int) -> ShardResult:
        """Close the ticks up to ``clock_ms`` without new events (an idle live stream: wall time moves on)."""
        if self.closed_ms == NEVER and not self._held_n:
            return ShardResult()
        return self._close_through(max(clock_ms + 1, self.watermark()))

    def flush(self) -> ShardResult:
        """End of input: close every tick up to the newest frontier, score the open tick provisionally.

        The open tick's events are applied (so a snapshot taken now holds them) but its users, and
        those whose refresh or rule timer falls due at its end, are evaluated *provisionally*: rows
        are written, their stage is not committed, no transition and no playbook grant follow, and
        the touched stay marked as touched. A later load or a resumed run closes that tick as an
        uninterrupted run would; the store ends as of that tick, as ``lifecycle score`` would see it.
        """
        newest = max(self.frontier.values(), default=NEVER)
        res = self._close_through(newest)
        t_open = self._tick_of(max(newest, self.closed_ms + 1))
        if self._held_n:
            t_open = self._held_heap[0]
            self._apply_early(t_open, res)
        if self.touched.shape[0]:
            self.touched_tick = t_open if self.touched_tick == NEVER else min(self.touched_tick, t_open)
        at = self.touched_tick if self.touched.shape[0] else t_open
        # and the users whose refresh or rule timer is due at that tick, so the store ends as of it
        refresh = np.union1d(self._stale_free(self.refresh.peek_due(at), at), self.watching.peek_due(at))
        due = np.union1d(refresh, self.timers.peek_due(at))
        rows = np.union1d(self.touched, due)
        rows = rows[self.state.user_id[rows] != ""]
        if rows.shape[0]:
            quiet = ~np.isin(rows, self.touched) & ~np.isin(rows, refresh)
            res.rows.append(self._rows(rows, at, from_events=self.touched, commit=False, read_at_ms=0, quiet=quiet))
        return res

    # ------------------------------------------------------------------ ticks

    def _tick_of(self, t_ms: int) -> int:
        """The tick an instant belongs to: ticks are ``(end - interval, end]``, named by their end."""
        tick = self.cfg.score_interval_ms
        return -((-t_ms) // tick) * tick

    def _hold(self, ev: EventColumns, front: npt.NDArray[np.int64]) -> None:
        if not len(ev):
            return
        tick = self.cfg.score_interval_ms
        ticks = -((-front) // tick) * tick
        if self.closed_ms != NEVER:  # a stream joining late: its old events fold into the open tick
            ticks = np.maximum(ticks, self.closed_ms + tick)
        order = np.argsort(ticks, kind="stable")
        t_sorted = ticks[order]
        cuts = np.flatnonzero(np.diff(t_sorted)) + 1
        whole = cuts.shape[0] == 0  # one tick: the batch as it is (no copy)
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, t_sorted.shape[0]], strict=True):
            t = int(t_sorted[a])
            part = ev if whole else ev.take(order[a:b])
            if t not in self._held:
                self._held[t] = []
                heapq.heappush(self._held_heap, t)
            self._held[t].append(part)
            self._held_n += len(part)

    def _take_held(self, t: int) -> EventColumns:
        parts = self._held.pop(t, [])
        if self._held_heap and self._held_heap[0] == t:
            heapq.heappop(self._held_heap)
        self._held_n -= sum(len(p) for p in parts)
        if not parts:
            return EventColumns.empty()
        ev = parts[0] if len(parts) == 1 else EventColumns.concat(parts)
        # a canonical order (time, then event id): the tick's result cannot depend on arrival order
        return ev.take(np.lexsort((ev.event_key, ev.ts_ms)))

    def _next_due(self) -> int | None:
        """The next tick with work: held events, a rule timer or a refresh (as a tick boundary)."""
        wheels = (self.timers, self.refresh, self.watching)
        cands = [t for t in (w.next_due_ms() for w in wheels) if t is not None]
        due = [self._tick_of(t) for t in cands]  # the first tick boundary at or after the due time
        if self._held_heap:
            due.append(self._held_heap[0])
        if self.touched.shape[0]:
            due.append(self.touched_tick)
        return min(due) if due else None

    def _close_through(self, watermark: int) -> ShardResult:
        self.retention.release(self.state, self.ledger)  # a new activation: no decision is pending
        res = ShardResult()
        while True:
            t = self._next_due()
            if t is None:
                break
            forced = self._held_n > self.cfg.max_held_events and bool(self._held_heap) and t == self._held_heap[0]
            if t >= watermark and not forced:  # the tick ending at the watermark may still get events
                break
            self._close(t, res)
        return res

    def _close(self, t: int, res: ShardResult) -> None:
        """Close tick ``t``: apply its events, evaluate touched, timer-due and refresh-due users as of ``t``."""
        st = self.state
        self.retention.on_tick(t, st, self.touched, self.cfg.taxonomy.stages)  # before t's events
        res.evicted += self.retention.take_evicted()
        ev = self._take_held(t)
        touched = self._apply_into(ev, res, t)
        if self.touched.shape[0] and t >= self.touched_tick:
            touched = np.union1d(touched, self.touched)
            self.touched = np.zeros(0, np.int64)
            self.touched_tick = NEVER
        st.clock_ms = max(st.clock_ms, t)
        self.timers.schedule(touched, st.ts)
        due = self.timers.pop_due(t)
        refresh = np.union1d(self._stale_free(self.refresh.pop_due(t), t), self.watching.pop_due(t))
        rows = np.union1d(np.union1d(touched, due), refresh)
        rows = rows[st.user_id[rows] != ""]  # timers of erased users hold nobody
        self.closed_ms = t
        res.ticks += 1
        if rows.shape[0] == 0:
            return
        # a rule timer re-evaluates a user to catch a change of stage: without one (the user acted again since
        # it was set, or another threshold holds) there is nothing to write until the refresh or an event
        timer_only = ~np.isin(rows, touched) & ~np.isin(rows, refresh)
        fr = self._rows(
            rows, t, from_events=touched, commit=True, read_at_ms=ev.read_at_ms if len(ev) else 0, quiet=timer_only
        )
        self._schedule_refresh(fr.rows, t)
        if self.probe is not None:
            self._watch(fr, refresh, t)
        res.timer_rows += int(np.isin(rows, due).sum())
        res.refresh_rows += int(np.isin(rows, refresh).sum())
        res.rows.append(fr)

    @dataclass(slots=True)
    class _Applied:
        rows_touched: npt.NDArray[np.int64]
        rejects: list[Rejection]
        applied: int
        duplicates: int

    def _apply_into(self, ev: EventColumns, res: ShardResult, t: int) -> npt.NDArray[np.int64]:
        """Apply tick ``t``'s ``ev``, counting it (and its dead letters) into ``res``; return the rows it touched.

        An event dated after its tick's end (only a future-dated one, whose time the clock was capped
        at: :func:`pipelines.flow.dataflow.split_by_shard`) is applied as of the tick's end, so neither
        state nor the dedup windows ever hold a time ahead of the clock.
        """
        if len(ev) and int(ev.ts_ms.max()) > t:
            ev = dataclasses.replace(ev, ts_ms=np.minimum(ev.ts_ms, t))
        applied = self._apply(ev)
        res.rejects += applied.rejects
        res.applied += applied.applied
        res.duplicates += applied.duplicates
        return applied.rows_touched

    def _apply_early(self, t: int, res: ShardResult) -> npt.NDArray[np.int64]:
        """Apply tick ``t``'s waiting events before it closes; its rows stay touched until it does."""
        touched = self._apply_into(self._take_held(t), res, t)
        self.touched = np.union1d(self.touched, touched)
        return touched

    def _apply(self, ev: EventColumns) -> ShardProcessor._Applied:
        if not len(ev):
            return ShardProcessor._Applied(np.zeros(0, np.int64), [], 0, 0)
        # new users beyond the rate guard: dead letters, before dedup, so that a flood is not remembered either
        ev, rejects, known = self.retention.admit(ev, self.state)
        fresh = self.dedup.first_seen(ev.event_key, ev.ts_ms)
        duplicates = int((~fresh).sum())
        if duplicates:
            ev, known = ev.take(fresh), None if known is None else known[fresh]
        applied = self.state.apply(ev, known)
        if applied.collisions.any():
            rejects += ev.rejections(applied.collisions, RejectReason.USER_ID_COLLISION, "64-bit user key collision")
        n = len(ev) - int(applied.collisions.sum())
        return ShardProcessor._Applied(applied.rows, rejects, n, duplicates)

    def _rows(
        self,
        rows: npt.NDArray[np.int64],
        t: int,
        *,
        from_events: npt.NDArray[np.int64],
        commit: bool,
        read_at_ms: int,
        quiet: npt.NDArray[np.bool_] | None = None,
    ) -> FeatureRows:
        """Evaluate ``rows`` as of ``t``; commit their stage and score time unless provisional.

        ``quiet`` rows are kept only when their stage changed (rule timers).
        """
        st = self.state
        feats = compute_features(st, rows, t)
        stage = self.cfg.taxonomy.assign_stages(feats)
        prev = st.stage[rows].copy()
        if quiet is not None and quiet.any():
            keep = ~quiet | (stage != prev)
            rows, feats, stage, prev = rows[keep], feats[keep], stage[keep], prev[keep]
        if commit:
            st.stage[rows] = stage
            st.scored_ms[rows] = t
        else:
            prev = stage  # provisional: no transition until the tick closes
        return FeatureRows(
            user_id=st.user_id[rows],
            rows=rows,
            features=feats,
            stage=stage,
            prev_stage=prev,
            last_event_ms=st.ts["ref_ts"][rows],  # the decay reference is the row's newest event of any type
            from_events=np.isin(rows, from_events),
            version=int(t),
            read_at_ms=read_at_ms,
            provisional=None if commit else np.ones(rows.shape[0], bool),
        )

    def _interval(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Each row's refresh interval, by its committed stage (churned users less often)."""
        cfg = self.cfg
        out = np.full(rows.shape[0], cfg.refresh_ms, np.int64)
        churned = self._churned_code()
        if churned is not None:
            out[self.state.stage[rows] == churned] = cfg.refresh_churned_ms
        return out

    def _schedule_refresh(self, rows: npt.NDArray[np.int64], evaluated_ms: int | npt.NDArray[np.int64]) -> None:
        """The next refresh of ``rows``: one interval after their evaluation at ``evaluated_ms``.

        An evaluation for any reason (an event, a stage change, a refresh) restarts the interval,
        so a user active every day is never refreshed: refresh rows are the silent users' alone.
        """
        if rows.shape[0]:
            self.refresh.schedule_at(rows, evaluated_ms + self._interval(rows))

    def _stale_free(self, popped: npt.NDArray[np.int64], t: int) -> npt.NDArray[np.int64]:
        """Of the refresh entries due at ``t``, the live users whose last committed evaluation is an interval old."""
        st = self.state
        popped = popped[st.user_id[popped] != ""]
        scored = st.scored_ms[popped]
        return popped[(scored != NEVER) & (scored + self._interval(popped) <= t)]

    def _watch(self, fr: FeatureRows, refresh: npt.NDArray[np.int64], t: int) -> None:
        """Refreshed users whose at-risk flag flips within a refresh interval: evaluate them again next tick."""
        assert self.probe is not None
        sel = np.isin(fr.rows, refresh)
        if not sel.any():
            return
        tax = self.cfg.taxonomy
        flips = flips_ahead(
            self.probe, tax, self.state, fr.rows[sel], fr.features[sel], fr.stage[sel], t, self.cfg.refresh_ms
        )
        self.watching.schedule_at(flips, np.full(flips.shape[0], t + 1, np.int64))

    def _churned_code(self) -> int | None:
        names = self.cfg.taxonomy.stages
        return names.index("churned") if "churned" in names else None

    # ------------------------------------------------------------------ erasure

    def erase(self, keys: npt.NDArray[np.int64]) -> int:
        """Remove users from this shard's state (erasure): their rows, action history and waiting events."""
        rows = self.state.lookup(keys)
        n = self.state.erase(keys)
        self.ledger.clear(rows)
        gone = rows[rows >= 0]
        if gone.shape[0] and self.touched.shape[0]:
            self.touched = self.touched[~np.isin(self.touched, gone)]
            if not self.touched.shape[0]:
                self.touched_tick = NEVER
        for t, parts in self._held.items():
            kept = [p.take(~np.isin(p.user_key, keys)) for p in parts]
            self._held_n -= sum(len(p) for p in parts) - sum(len(p) for p in kept)
            self._held[t] = kept
        return n

    # ------------------------------------------------------------------ recovery

    def snapshot(self) -> dict[str, Any]:
        self.retention.release(self.state, self.ledger)  # between activations: nothing pending
        held = [(t, p.compact()) for t in sorted(self._held) for p in self._held[t]]
        return {
            "state": self.state.snapshot_arrays(),
            "timers": self.timers.snapshot(),
            "refresh": self.refresh.snapshot(),
            "refresh_ms": (self.cfg.refresh_ms, self.cfg.refresh_churned_ms),
            "refresh_since": "evaluation",
            "watching": self.watching.snapshot(),
            "frontier": dict(self.frontier),
            "caught_up": sorted(self.caught_up),
            "closed_ms": self.closed_ms,
            "held": held,
            "touched": self.touched.copy(),
            "touched_tick": self.touched_tick,
            "dedup": self.dedup.snapshot(),
            "taxonomy": self.cfg.taxonomy.fingerprint,
            "ledger": self.ledger.snapshot(self.state.n),
            "retention": self.retention.snapshot(),
        }

    @classmethod
    def restore(cls, cfg: ShardConfig, snap: dict[str, Any], probe: RiskProbe | None = None) -> ShardProcessor:
        """Resume from :meth:`snapshot`, under ``cfg``'s taxonomy and playbook.

        A snapshot taken under another taxonomy holds stage codes of that
        taxonomy: every user is re-labelled from state (no transition is
        emitted: ``lifecycle rescore`` writes the new labels) and the rule timers
        are rebuilt for the new thresholds; a changed refresh interval rebuilds
        the refresh wheel. Playbook history is mapped by action name, so editing
        a playbook keeps cooldowns.
        """
        st = ShardState.restore(snap["state"])
        pb = cfg.playbook
        led = snap.get("ledger")
        ledger = ActionLedger.restore(led, pb.action_names, pb.rule_ids()) if led is not None else None
        proc = cls(cfg, st, Timers.restore(snap["timers"]), Deduplicator.restore(snap["dedup"]), ledger, probe=probe)
        # streams of an earlier input that this one does not feed can send nothing more: they hold no tick back
        kept = {str(k): int(v) for k, v in snap["frontier"].items() if not cfg.streams or k in cfg.streams}
        proc.frontier.update(kept)
        proc.caught_up = set(snap["caught_up"])
        proc.closed_ms = int(snap["closed_ms"])
        for t, part in snap["held"]:
            proc._hold_at(int(t), part)
        proc.touched = np.asarray(snap["touched"], np.int64)
        proc.touched_tick = int(snap["touched_tick"])
        proc.retention = Retention.restore(cfg.memory, proc.retention.horizon_ms, snap.get("retention"))
        # snapshots from before taxonomies were configurable hold codes of the default one
        if snap.get("taxonomy", default_taxonomy().fingerprint) != cfg.taxonomy.fingerprint:
            proc.relabel()
        live = np.flatnonzero(st.user_id[: st.n] != "").astype(np.int64)
        if tuple(proc.timers.specs) != tuple(cfg.taxonomy.timers):
            proc.timers = Timers(cfg.taxonomy.timers, cfg.timer_bucket_ms)
            proc.timers.schedule(live, st.ts)
        same = tuple(snap["refresh_ms"]) == (cfg.refresh_ms, cfg.refresh_churned_ms)
        if same and snap.get("refresh_since") == "evaluation":
            proc.refresh = Timers.restore(snap["refresh"])
            proc.watching = Timers.restore(snap["watching"])
        else:  # another interval, or the fixed-phase wheel of older snapshots: one interval after each evaluation
            scored = live[st.scored_ms[live] != NEVER]
            proc._schedule_refresh(scored, st.scored_ms[scored])
        return proc

    def _hold_at(self, t: int, part: EventColumns) -> None:
        if t not in self._held:
            self._held[t] = []
            heapq.heappush(self._held_heap, t)
        self._held[t].append(part)
        self._held_n += len(part)

    def relabel(self, chunk: int = 65_536) -> int:
        """Recompute every scored user's stage under the configured taxonomy (state only); return the count."""
        st = self.state
        scored = np.flatnonzero(st.stage[: st.n] >= 0).astype(np.int64)
        for a in range(0, scored.shape[0], chunk):
            rows = scored[a : a + chunk]
            st.stage[rows] = self.cfg.taxonomy.assign_stages(compute_features(st, rows, st.clock_ms))
        return int(scored.shape[0])

    def staleness_ms(self) -> tuple[int, int]:
        """Event-time age of live users' last scores at the last closed tick: (oldest, 99th percentile).

        Churned users are left out: they refresh on their own, longer interval.
        """
        st = self.state
        live = (st.user_id[: st.n] != "") & (st.scored_ms[: st.n] != NEVER)
        churned = self._churned_code()
        if churned is not None:
            live &= st.stage[: st.n] != churned
        scored = st.scored_ms[: st.n][live]
        if scored.shape[0] == 0 or self.closed_ms == NEVER:
            return 0, 0
        age = self.closed_ms - scored
        return int(age.max()), int(np.percentile(age, 99))

    def held_events(self) -> int:
        """Events waiting for their tick."""
        return self._held_n
