"""The Bytewax dataflow: source -> decode -> shard -> state/features -> score -> store.

::

    source (RawBatch) --decode--> Decoded --split by hash(user_id)--> (shard, EventColumns)
        |                                                      |
        +-- rejects --------------------------+      stateful "state" (ShardProcessor)
                                              |          |-- late / collisions -> rejects
                                              v          v
                                      rejected_events   FeatureRows --score--> user_scores,
                                                                               stage_transitions

Every item is a batch. The stateful step is keyed by shard, not by user:
Bytewax's per-user windows cost O(live keys) per activation (DESIGN.md); the
shard holds columnar state for many users instead. All I/O happens in the
sink, at the end; the steps in between are pure.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink

from pipelines.contract.decode import Decoded, DecodeLimits, decode_batch
from pipelines.contract.events import RawBatch, Rejection, bound_dead_letters
from pipelines.contract.time import NEVER, Clock
from pipelines.core.evaluated import concat_rows
from pipelines.core.labels import DecideActions, label_rows
from pipelines.core.rows import Records, reject_records
from pipelines.core.shard import ShardConfig, ShardProcessor, ShardResult, Slice
from pipelines.flow.recovery import FLOW_ID, STATE_STEP
from pipelines.monitoring.drift import DriftMonitor
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.privacy.consent import ConsentFilter
from pipelines.scoring.scorer import Scorer


@dataclass(frozen=True, slots=True)
class FlowConfig:
    shards: int = 4
    limits: DecodeLimits = DecodeLimits()
    shard: ShardConfig = ShardConfig()
    #: Advance a shard's clock by wall time when it saw no events for this long (0 = never).
    #: Right for live streams, wrong for replays of history (their clock is not the wall clock).
    idle_advance_seconds: float = 0.0
    #: live freshness: while event time is within this of the wall clock, the open tick's touched users are
    #: also scored provisionally at once (their committed rows follow at the tick's end); 0 = off
    provisional_window_seconds: float = 0.0
    #: the event clock may run at most this far ahead of the wall clock (events dated later move it no further)
    clock_skew_ms: int = 300_000
    #: several processes: sub-batches cross process boundaries, so each must carry only
    #: its own raw payloads (not a reference to the whole batch) when pickled
    exchange: bool = False
    #: a dead letter keeps at most this many bytes of its payload (0 = all of it)
    max_dead_letter_bytes: int = 4096


#: Score staleness is measured over every live user (O(users)): at most this often (wall seconds).
STALENESS_EVERY_S = 5.0


def shard_of(user_key: np.ndarray, shards: int) -> np.ndarray:
    """Shard of each user: stable across processes and restarts (the key is a stable hash)."""
    return (user_key.view(np.uint64) % np.uint64(shards)).astype(np.int64)


def split_by_shard(d: Decoded, shards: int) -> list[tuple[str, tuple[str, Slice]]]:
    """One :class:`~pipelines.core.shard.Slice` for *every* shard, keyed ``"s0"``, ``"s1"``, ...

    Every shard gets a slice, empty or not, carrying what the whole batch says about its
    stream's event time: each event's frontier (the stream's newest event time up to it, in
    the batch's order) and the batch's newest event time. So every shard sees every stream
    move, closes the same ticks, and fires its timers even when none of its own users spoke.
    The value repeats the key because Bytewax builds stateful logic from the resume state alone.
    Event times count towards the clock only up to the batch's ``clock_cap_ms`` (the wall clock plus
    the allowed skew): a few future-dated events cannot make every genuine one after them late.
    """
    ev = d.events
    ts = np.minimum(ev.ts_ms, d.clock_cap_ms)
    front = np.maximum.accumulate(ts) if ts.shape[0] else np.zeros(0, np.int64)
    newest = int(ts.max()) if ts.shape[0] else NEVER
    if shards == 1:
        return [("s0", ("s0", Slice(d.stream, ev, front, newest, d.caught_up)))]
    sh = shard_of(ev.user_key, shards)
    order = np.argsort(sh, kind="stable")
    bounds = np.searchsorted(sh[order], np.arange(shards + 1))
    out = []
    for k in range(shards):
        idx = order[bounds[k] : bounds[k + 1]]
        out.append((f"s{k}", (f"s{k}", Slice(d.stream, ev.take(idx), front[idx], newest, d.caught_up))))
    return out


@dataclass(frozen=True, slots=True)
class ShardOutput:
    """One activation's store records (scores, transitions) and dead letters."""

    records: list[Records]
    rejects: list[Rejection]


class ShardLogic(StatefulLogic[tuple[str, Slice], ShardOutput, dict[str, Any]]):
    """Bytewax glue around :class:`ShardProcessor` (one per shard key).

    Scoring and the playbook run here, inside the stateful step, because the
    action decision reads and updates per-user history that is part of the
    shard's state (cooldowns, daily caps). It costs no parallelism: a map after
    the step would run on the same worker anyway.
    """

    def __init__(
        self,
        key: str,
        proc: ShardProcessor,
        score: ScoreStep,
        metrics: PipelineMetrics,
        cfg: FlowConfig,
        clock: Clock,
    ) -> None:
        self.key = key
        self.proc = proc
        self.score = score
        self.metrics = metrics
        self.cfg = cfg
        self.clock = clock
        self._last_item_wall = clock()
        self._staleness_at = float("-inf")

    def on_item(self, value: tuple[str, Slice]) -> tuple[Iterable[ShardOutput], bool]:
        self.key, sl = value
        now = self.clock()
        window = self.cfg.provisional_window_seconds
        # live: the stream's event time is near the wall clock, so fresh rows are worth a provisional score
        live = window > 0 and sl.batch_max != NEVER and now * 1000 - sl.batch_max <= window * 1000
        res = self.proc.process(sl, provisional=live)
        self._last_item_wall = now
        return [self._finish(res)], StatefulLogic.RETAIN

    def _finish(self, res: ShardResult) -> ShardOutput:
        self._observe(res)
        shard = int(self.key[1:]) if self.key[1:].isdigit() else 0
        return ShardOutput(self.score(res, self.proc, shard, self.cfg.shards), res.rejects)

    def on_notify(self) -> tuple[Iterable[ShardOutput], bool]:
        st = self.proc.state
        idle = self.clock() - self._last_item_wall
        if idle < self.cfg.idle_advance_seconds:
            return [], StatefulLogic.RETAIN
        # The stream is idle: let wall time (minus the allowed lateness) move the clock,
        # so silent users still reach dormant/churned when no event arrives at all.
        target = int(self.clock() * 1000) - self.cfg.shard.allowed_lateness_ms
        res = self.proc.advance(max(target, st.clock_ms))
        return ([self._finish(res)] if res.rows else []), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[ShardOutput], bool]:
        # End of a finite input: score the users still waiting for their cadence,
        # so the store ends with every user's final state.
        res = self.proc.flush()
        return ([self._finish(res)] if res.rows or res.rejects else []), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.cfg.idle_advance_seconds <= 0:
            return None
        return datetime.fromtimestamp(self._last_item_wall, UTC) + timedelta(seconds=self.cfg.idle_advance_seconds)

    def snapshot(self) -> dict[str, Any]:
        # Copies (snapshot_arrays copies): Bytewax may serialise after later items mutate state.
        return {"key": self.key, **self.proc.snapshot()}

    def _observe(self, res: ShardResult) -> None:
        m = self.metrics
        m.events_applied.inc(res.applied)
        m.events_duplicate.inc(res.duplicates)
        count_rejects(m, res.rejects)
        m.timer_rows.inc(res.timer_rows)
        m.refresh_rows.inc(res.refresh_rows)
        m.batches.labels(step="state").inc()
        st = self.proc.state
        if self.proc.closed_ms != NEVER:
            m.watermark.labels(shard=self.key).set(self.proc.closed_ms / 1000)
        m.users_in_state.labels(shard=self.key).set(st.users)
        m.users_evicted.inc(res.evicted)
        m.state_bytes.labels(shard=self.key).set(st.nbytes())
        m.events_held.labels(shard=self.key).set(self.proc.held_events())
        now = self.clock()
        if now - self._staleness_at >= STALENESS_EVERY_S and self.proc.closed_ms != NEVER:
            self._staleness_at = now
            oldest, p99 = self.proc.staleness_ms()
            m.score_staleness.labels(shard=self.key, stat="max").set(oldest / 1000)
            m.score_staleness.labels(shard=self.key, stat="p99").set(p99 / 1000)


class ScoreStep:
    """Feature rows -> scores, tiers, at-risk, actions -> store records (user_scores, stage_transitions)."""

    def __init__(
        self,
        scorer: Scorer,
        shard_cfg: ShardConfig,
        metrics: PipelineMetrics,
        clock: Clock,
        drift: DriftMonitor | None = None,
        consent: ConsentFilter | None = None,
    ) -> None:
        self.scorer = scorer
        self.taxonomy = shard_cfg.taxonomy
        self.playbook = shard_cfg.playbook
        self.metrics = metrics
        self.clock = clock
        self.drift = drift
        self.consent = consent
        self._stage_names = (*self.taxonomy.stages, "none")

    def __call__(self, res: ShardResult, proc: ShardProcessor, shard: int = 0, shards: int = 1) -> list[Records]:
        """Score and label the rows of every tick this activation closed, as one block (decisions tick by tick)."""
        ticks = [r for r in res.rows if len(r)]
        if not ticks:
            return []
        rows = concat_rows(ticks)
        scores = self.scorer.score(rows.features)
        if self.drift is not None:
            self.drift.observe(
                rows.features, {"churn_risk": scores.churn_risk, "purchase_propensity": scores.purchase_propensity}
            )
        if self.consent is not None:
            marketing = self.consent.marketing_ok(proc.state.user_key[rows.rows])
        else:
            marketing = np.ones(len(rows), bool)
        labeled = label_rows(
            rows,
            scores,
            self.taxonomy,
            DecideActions(
                self.playbook,
                proc.ledger,
                marketing,
                shard=shard,
                shards=shards,
                user_keys=proc.state.user_key[rows.rows],
            ),
            model_version=self.scorer.model_version,
            scored_at_ms=int(self.clock() * 1000),
        )
        acts = labeled.decisions
        assert acts is not None  # DecideActions always decides
        self.metrics.batches.labels(step="score").inc()
        count_transitions(self.metrics, rows.prev_stage, rows.stage, self._stage_names)
        count_actions(self.metrics, acts.action[acts.granted], self.playbook.action_names)
        return labeled.records


def build_flow(
    source: Source[RawBatch],
    *,
    sink: Sink[tuple[str, Records]],
    scorer: Scorer,
    metrics: PipelineMetrics,
    cfg: FlowConfig,
    source_kind: str,
    clock: Clock = time.time,
    on_batch: Callable[[int], None] | None = None,
    drift: DriftMonitor | None = None,
    consent: ConsentFilter | None = None,
    dead_letter_sink: Sink[tuple[str, list[Rejection]]] | None = None,
    transitions_sink: Sink[tuple[str, Records]] | None = None,
) -> Dataflow:
    """Wire the dataflow from ``source`` to ``sink``. ``on_batch(n)`` is called with each raw batch's size.

    ``sink`` receives every store row as ``("store", Records)``: in production the
    :class:`~pipelines.io.store.sink.StoreSink` (ClickHouse), in tests any Bytewax sink
    (``bytewax.testing.TestingSink``), so a dataflow test needs no engine.

    ``dead_letter_sink`` / ``transitions_sink`` (Kafka, :mod:`pipelines.io.kafka.sinks`): extra
    outputs beside the store; every sink acknowledges its writes before an epoch commits.
    """
    flow = Dataflow(FLOW_ID)
    raw = op.input("events", flow, source)
    in_counter = metrics.events_in.labels(source=source_kind)

    def decode(batch: RawBatch) -> Decoded:
        now_ms = int(clock() * 1000)
        d = decode_batch(batch, now_ms=now_ms, limits=cfg.limits)
        d = dataclasses.replace(d, clock_cap_ms=now_ms + cfg.clock_skew_ms)
        in_counter.inc(d.total)
        count_rejects(metrics, d.rejects)
        if consent is not None:
            keep = consent.keep(d.events)
            if not keep.all():
                metrics.events_opted_out.inc(int((~keep).sum()))
                d = dataclasses.replace(d, events=d.events.take(keep))
        metrics.batches.labels(step="decode").inc()
        if on_batch is not None:
            on_batch(d.total)
        return d

    decoded = op.map("decode", raw, decode)

    def shard(d: Decoded) -> list[tuple[str, tuple[str, Slice]]]:
        parts = split_by_shard(d, cfg.shards)
        if cfg.exchange:
            parts = [(k, (k2, dataclasses.replace(sl, events=sl.events.compact()))) for k, (k2, sl) in parts]
        return parts

    keyed = op.flat_map("shard", decoded, shard)

    score = ScoreStep(scorer, cfg.shard, metrics, clock, drift, consent)

    def build_logic(resume: dict[str, Any] | None) -> ShardLogic:
        if resume:
            proc = ShardProcessor.restore(cfg.shard, resume, probe=scorer.score_probs)
            metrics.events_resumed.inc(proc.held_events())  # read by the run that snapshotted them
            return ShardLogic(resume["key"], proc, score, metrics, cfg, clock)
        return ShardLogic("", ShardProcessor(cfg.shard, probe=scorer.score_probs), score, metrics, cfg, clock)

    processed = op.stateful(STATE_STEP, keyed, build_logic)
    results = op.map("unkey", processed, lambda kv: kv[1])

    decode_rejects = op.filter_map("decode_rejects", decoded, lambda d: d.rejects or None)
    state_rejects = op.filter_map("state_rejects", results, lambda r: r.rejects or None)
    all_rejects = op.map(
        "bound_rejects",
        op.merge("rejects", decode_rejects, state_rejects),
        lambda rs: bound_dead_letters(rs, cfg.max_dead_letter_bytes),
    )
    reject_rows = op.map("reject_rows", all_rejects, lambda rs: reject_records(rs, int(clock() * 1000)))

    score_rows = op.flat_map("score_rows", results, lambda r: r.records)
    records = op.key_on("to_store", op.merge("records", score_rows, reject_rows), lambda _: "store")
    op.output("store", records, sink)
    if dead_letter_sink is not None:
        op.output("dead_letters_out", op.key_on("to_dead_letters", all_rejects, lambda _: "dlq"), dead_letter_sink)
    if transitions_sink is not None:
        transitions = op.filter("transitions_only", score_rows, lambda r: r.table == "stage_transitions")
        op.output("transitions_out", op.key_on("to_transitions", transitions, lambda _: "t"), transitions_sink)
    return flow


def count_transitions(metrics: PipelineMetrics, prev: np.ndarray, stage: np.ndarray, names: Sequence[str]) -> None:
    """Increment the transitions counter by (from, to) pairs, vectorised. ``names[-1]`` is "none" (code -1)."""
    changed = prev != stage
    if not changed.any():
        return
    pairs, counts = np.unique(np.stack([prev[changed], stage[changed]]), axis=1, return_counts=True)
    for (a, b), c in zip(pairs.T, counts, strict=True):
        metrics.transitions.labels(from_stage=names[a], to_stage=names[b]).inc(int(c))


def count_actions(metrics: PipelineMetrics, granted: np.ndarray, names: Sequence[str]) -> None:
    """Count new actions by action (a bounded label set: the playbook's actions)."""
    if granted.shape[0] == 0:
        return
    codes, counts = np.unique(granted, return_counts=True)
    for a, c in zip(codes, counts, strict=True):
        metrics.actions.labels(action=names[a]).inc(int(c))


def count_rejects(metrics: PipelineMetrics, rejects: list[Rejection]) -> None:
    """Count dead letters by reason (bounded label set: :class:`RejectReason`)."""
    for reason, n in Counter(r.reason.value for r in rejects).items():
        metrics.events_rejected.labels(reason=reason).inc(n)
