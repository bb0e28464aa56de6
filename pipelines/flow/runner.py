"""Wiring of one pipeline run from :class:`~pipelines.settings.Settings`.

Opens the store and applies the DDL, loads the model, builds the source and the
flow, and runs it in this process. Everything it creates is passed in
explicitly (store, registry, clock), so tests can run the real flow against a
real store with their own registry.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from prometheus_client import CollectorRegistry

from pipelines.contract.decode import DecodeLimits
from pipelines.contract.events import RawBatch
from pipelines.contract.time import Clock
from pipelines.core.retention import MemoryBounds
from pipelines.core.shard import ShardConfig
from pipelines.flow.dataflow import FlowConfig, build_flow
from pipelines.flow.recovery import check_trusted, ensure_private, recovery_parts
from pipelines.io.files import FileSource, IteratorSource
from pipelines.io.kafka.sinks import KafkaDeadLetterSink, KafkaTransitionsSink
from pipelines.io.kafka.source import KafkaBatchSource
from pipelines.io.kafka.stop import request_stop
from pipelines.io.store.base import Store, record_model_version
from pipelines.io.store.migrations import migrate
from pipelines.io.store.sink import StoreSink
from pipelines.io.store.url import open_store
from pipelines.monitoring.drift import DriftMonitor, DriftReference
from pipelines.monitoring.metrics import PipelineMetrics, build_labels, serve
from pipelines.offline.history import raw_batches
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches
from pipelines.privacy.consent import ConsentFilter
from pipelines.scoring.scorer import Scorer
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunResult:
    seconds: float
    events_in: int
    events_applied: int
    duplicates: int
    opted_out: int
    rejected: dict[str, int]
    rows_written: dict[str, int]
    expected_events: int | None
    #: new actions granted by the playbook during the run, by action
    actions_granted: dict[str, int] = field(default_factory=dict)
    #: events read by an earlier run, restored with the state and applied in this one
    events_resumed: int = 0


class StateError(RuntimeError):
    """The pipeline state and the store disagree (a run without state against a store that has scores)."""


def shard_config(s: Settings, streams: Sequence[str] = ()) -> ShardConfig:
    """The shard step's configuration from ``s``: taxonomy and playbook (validated), ticks, refresh, lateness, dedup.

    ``streams``: the input streams known up front (a tick waits for every one of them).
    """
    taxonomy = s.load_taxonomy()
    return ShardConfig(
        taxonomy=taxonomy,
        playbook=s.load_playbook(taxonomy),
        allowed_lateness_ms=s.allowed_lateness_seconds * 1000,
        score_interval_ms=int(s.score_interval_seconds * 1000),
        refresh_ms=int(s.refresh_seconds * 1000),
        refresh_churned_ms=int(s.refresh_churned_seconds * 1000),
        streams=tuple(streams),
        max_held_events=s.max_held_events,
        dedup_window_ms=s.dedup_window_seconds * 1000,
        dedup_max_keys=s.dedup_max_keys,
        memory=MemoryBounds(
            max_new_users_per_second=s.max_new_users_per_second,
            churned_retention_ms=int(s.churned_retention_seconds * 1000),
        ),
    )


def flow_config(s: Settings, streams: Sequence[str] = ()) -> FlowConfig:
    return FlowConfig(
        shards=s.shards,
        limits=DecodeLimits(max_event_bytes=s.max_event_bytes, max_future_ms=s.max_future_seconds * 1000),
        shard=shard_config(s, streams),
        idle_advance_seconds=s.idle_advance_seconds,
        clock_skew_ms=s.clock_skew_seconds * 1000,
        provisional_window_seconds=s.provisional_window_seconds,
        exchange=s.addresses is not None and len(s.addresses.split(",")) > 1,
        max_dead_letter_bytes=s.max_dead_letter_bytes,
    )


def make_source(
    s: Settings,
    clock: Clock,
    metrics: PipelineMetrics | None = None,
    on_read: Callable[[int, bool], None] | None = None,
) -> tuple[Source[RawBatch], str, int | None]:
    """The source for ``s.input``, its kind label, and the number of events if known up front."""
    if s.input == "simulate":
        sim = simulate(SimConfig(users=s.sim_users, days=s.sim_days, seed=s.sim_seed))
        events = sim.events
        return (
            IteratorSource("simulate", lambda: iter_ndjson_batches(events, s.batch_events), clock=clock),
            "simulate",
            events.height,
        )
    if s.input.startswith("kafka://"):
        lag = metrics.kafka_lag if metrics is not None else None
        kafka = KafkaBatchSource.from_url(
            s.input,
            batch_events=s.batch_events,
            max_batch_bytes=s.max_batch_bytes,
            start=s.kafka_start,
            eof_exit=s.kafka_eof_exit,
            group_id=s.kafka_group,
            config={k: v.get_secret_value() for k, v in s.kafka_config.items()},
            clock=clock,
            lag_gauge=lag,
        )
        return kafka, "kafka", None
    paths = [Path(p) for p in s.input.split(",")]
    # a line longer than an event may be is read only as far as the decoder needs to reject it (oversized)
    max_line = max(s.max_event_bytes + 1, 4096)
    source = FileSource(
        paths, batch_events=s.batch_events, clock=clock, max_line_bytes=max_line, on_read=on_read,
        table_reader=_table_batches, max_batch_bytes=s.max_batch_bytes,
    )  # fmt: skip
    return source, "file", None


def _table_batches(path: Path, rows: int) -> Iterator[RawBatch]:
    """CSV and Parquet event files as NDJSON payload batches, as ``train`` and ``score`` read them."""
    return raw_batches(path, rows_per_batch=rows)


def kafka_outputs(s: Settings) -> dict[str, Any]:
    """The flow's Kafka sinks configured in ``s`` (build_flow keyword arguments), same client options as the source."""
    if not (s.dead_letter_topic or s.transitions_topic):
        return {}

    config = {k: v.get_secret_value() for k, v in s.kafka_config.items()}
    out: dict[str, Any] = {}
    if s.dead_letter_topic:
        out["dead_letter_sink"] = KafkaDeadLetterSink.from_url(
            s.dead_letter_topic, config=config, pipeline_version=build_labels()["version"]
        )
    if s.transitions_topic:
        out["transitions_sink"] = KafkaTransitionsSink.from_url(s.transitions_topic, config=config)
    return out


def open_migrated_store(s: Settings) -> Store:
    store = open_store(
        s.store, user=s.store_user, password=s.store_password.get_secret_value(), ca_file=s.store_ca_file
    )
    migrate(store, s.sql_dir)
    return store


def prepare_flow(
    s: Settings,
    *,
    registry: CollectorRegistry,
    store: Store,
    clock: Clock = time.time,
    on_batch: Callable[[int], None] | None = None,
    on_source: Callable[[int | None], None] | None = None,
    serve_metrics: bool = True,
    source: Source[RawBatch] | None = None,
    rebuild_state: bool = False,
    on_read: Callable[[int, bool], None] | None = None,
) -> tuple[Dataflow, int | None]:
    """Everything but running: model, metrics endpoint, source, the wired flow (and the event count if known)."""
    metrics = PipelineMetrics(registry)
    if s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    scorer = Scorer.from_dir(s.model_dir, device=s.device, max_batch_rows=s.score_batch_rows, metrics=metrics)
    metrics.model_info.info({"version": scorer.model_version, "schema": str(scorer.artifact.meta["schema_hash"])})
    metrics.scoring_device.labels(device=scorer.device.type).set(1)
    record_model_version(store, scorer.artifact.meta)
    reference = DriftReference.from_meta(scorer.artifact.meta)
    drift = DriftMonitor(reference, metrics) if reference is not None else None
    if drift is None:
        log.warning("model %s has no drift reference: drift gauges stay empty", scorer.model_version)
    if os.environ.get("BYTEWAX_DATAFLOW_API_ENABLED"):
        log.warning("BYTEWAX_DATAFLOW_API_ENABLED is set: Bytewax's own API server binds 0.0.0.0")
    if serve_metrics:
        serve(registry, s.metrics_host, s.metrics_port)
    if source is None:
        source, kind, expected = make_source(s, clock, metrics, on_read)
    else:  # injected (benchmarks, embedding applications)
        kind, expected = "custom", None
    if on_source is not None:
        on_source(expected)
    streams = source.streams() if isinstance(source, HasStreams) else []
    flow = build_flow(
        source,
        sink=StoreSink(store, metrics, clock=clock, retry=s.store_retry()),
        scorer=scorer,
        metrics=metrics,
        cfg=flow_config(s, streams),
        source_kind=kind,
        clock=clock,
        on_batch=on_batch,
        drift=drift,
        consent=ConsentFilter(
            store,
            refresh_seconds=s.consent_refresh_seconds,
            clock=clock,
            metrics=metrics,
            salt=check_erasure_salt(store, s),
        ),
        **kafka_outputs(s),
    )
    state = s.state_dir()
    if state is not None:
        check_trusted(state)  # before Bytewax unpickles anything from it
    if state is not None and s.addresses is None:
        # single process: create the store on first use. A cluster's recovery partitions are
        # made before its processes start (`--processes` does it; on Kubernetes each pod
        # creates its own part-<ordinal>), since concurrent creation would race.
        check_state(store, state, rebuild=rebuild_state)
        ensure_recovery_dir(state, 1)
    return flow, expected


@runtime_checkable
class HasStreams(Protocol):
    """A source that names its event-time streams up front (files, the simulator, Kafka partitions)."""

    def streams(self) -> list[str]: ...


def check_erasure_salt(store: Store, s: Settings) -> bytes:
    """The erasure HMAC key; refuse to start without it against a store that has erased users.

    Without the key the pipeline cannot recognise an erased user, and a replay would bring them back.
    """
    salt = s.erasure_salt.get_secret_value().encode()
    if not salt:
        n = store.query("SELECT count() AS n FROM suppressed FINAL WHERE suppressed").to_pylist()[0]["n"]
        if n:
            raise StateError(
                f"the store has {n} erased user(s) but LIFECYCLE_ERASURE_SALT is not set: the pipeline could not "
                "recognise them and would score them again; set it to the key forget used"
            )
    return salt


def check_state(store: Store, state: Path, *, rebuild: bool) -> None:
    """Refuse to start from empty state against a store that holds scores; ``rebuild`` starts over on purpose.

    Starting empty there would overwrite good scores with ones computed from part of
    the history. ``rebuild`` removes the state directory: the given input is replayed
    from scratch (give it the whole history).
    """
    has_state = bool(recovery_parts(state))
    if rebuild:
        if has_state:
            log.warning("--rebuild-state: removing the pipeline state at %s; the input is replayed from scratch", state)
            shutil.rmtree(state)
        return
    if has_state:
        return
    rows = store.query("SELECT count() AS n FROM user_scores").to_pylist()
    n = int(rows[0]["n"]) if rows else 0
    if n:
        raise StateError(
            f"the store already holds {n:,} score rows but there is no pipeline state at {state}: a run from "
            "empty state would overwrite them with scores of part of the history. Point --recovery-dir at the "
            "state of the runs that wrote them, or rebuild on purpose with --rebuild-state (replays the given "
            "input from scratch: give it the whole history)"
        )


def run_pipeline(
    s: Settings,
    *,
    registry: CollectorRegistry | None = None,
    store: Store | None = None,
    clock: Clock = time.time,
    on_batch: Callable[[int], None] | None = None,
    on_source: Callable[[int | None], None] | None = None,
    serve_metrics: bool = True,
    source: Source[RawBatch] | None = None,
    rebuild_state: bool = False,
    on_read: Callable[[int, bool], None] | None = None,
) -> RunResult:
    """Run the flow until the source ends (files, simulator) or the process is stopped (Kafka)."""
    registry = registry if registry is not None else CollectorRegistry()
    own_store = store is None
    store = store or open_migrated_store(s)
    try:
        flow, expected = prepare_flow(
            s, registry=registry, store=store, clock=clock, on_batch=on_batch, on_source=on_source,
            serve_metrics=serve_metrics, source=source, rebuild_state=rebuild_state, on_read=on_read,
        )  # fmt: skip
        state = s.state_dir()
        recovery = RecoveryConfig(str(state)) if state is not None else None
        cluster: dict[str, Any] = {}
        if s.addresses is not None:
            cluster = {"process_id": s.process_id, "addresses": s.addresses.split(",")}
        t0 = time.perf_counter()
        cli_main(flow, epoch_interval=timedelta(seconds=s.epoch_seconds), recovery_config=recovery, **cluster)
        elapsed = time.perf_counter() - t0
    finally:
        if own_store:
            store.close()
    return RunResult(
        seconds=elapsed,
        events_in=int(_total(registry, "lifecycle_events_in_total")),
        events_applied=int(_total(registry, "lifecycle_events_applied_total")),
        duplicates=int(_total(registry, "lifecycle_events_duplicate_total")),
        opted_out=int(_total(registry, "lifecycle_events_opted_out_total")),
        rejected=_by_label(registry, "lifecycle_events_rejected_total", "reason"),
        rows_written=_by_label(registry, "lifecycle_rows_written_total", "table"),
        expected_events=expected,
        actions_granted=_by_label(registry, "lifecycle_actions_total", "action"),
        events_resumed=int(_total(registry, "lifecycle_events_resumed_total")),
    )


def install_graceful_stop() -> None:
    """On the first SIGTERM, drain instead of dying: Kafka partitions end at their next poll.

    The flow then runs like at the end of a finite input: pending scores are flushed,
    the sink writes everything buffered, and Bytewax commits a final epoch whose
    snapshot holds each partition's offset after the last record handed on. A restart
    with the same recovery store therefore repeats and loses nothing. Bytewax itself
    has no drain on a signal (SIGINT stops its workers abruptly, SIGTERM's default kills
    the process), so this handler is what makes ``kubectl delete pod`` or
    ``systemctl stop`` clean. A second SIGTERM kills the process at once (the
    default action is restored), which is still safe: the run resumes from its last
    committed epoch. Call it from the main thread, before :func:`run_pipeline`.
    """

    def on_sigterm(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM: stop at once
        log.warning(
            "SIGTERM received: draining (Kafka partitions end now, pending scores are flushed, a final "
            "snapshot is committed); send SIGTERM again to stop at once"
        )
        request_stop()

    signal.signal(signal.SIGTERM, on_sigterm)


def ensure_recovery_dir(path: Path, parts: int) -> None:
    """Create a Bytewax recovery store of ``parts`` partitions on first use (no-op when it exists)."""

    if not recovery_parts(path):
        ensure_private(path)
        init_db_dir(path, parts)
        ensure_private(path)


def _total(registry: CollectorRegistry, sample: str) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == sample)


def _by_label(registry: CollectorRegistry, sample: str, label: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for m in registry.collect():
        for smp in m.samples:
            if smp.name == sample and smp.value:
                out[smp.labels[label]] = out.get(smp.labels[label], 0) + int(smp.value)
    return out
