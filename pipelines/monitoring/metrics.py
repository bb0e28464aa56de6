"""Prometheus metrics of the pipeline, on an injectable registry.

Every metric is created on the registry passed in (tests use a fresh one);
nothing registers on import. Labels are bounded enumerations (reason, table,
stage, source kind, shard, partition, drift column); never a user id. The
catalogue with units and meaning is ``docs/metrics.md``; the dashboards and
alert rules under ``infra/`` are tested against these names.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, start_http_server

from pipelines.contract.events import RejectReason

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_FRESHNESS_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)
_ROW_BUCKETS = (1, 16, 64, 256, 1024, 4096, 16384, 65536, 262144)
#: Tables the sink writes (``sql/migrations``). Their per-table series exist from the start,
#: so ``rate()`` and the sink-error alert see 0 rather than no data before the first write.
TABLES: tuple[str, ...] = ("user_scores", "stage_transitions", "rejected_events")


class PipelineMetrics:
    """All metrics of one pipeline process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.events_in = Counter("lifecycle_events_in", "Raw events read from the source", ["source"], registry=r)
        self.events_applied = Counter("lifecycle_events_applied", "Events applied to user state", registry=r)
        self.events_duplicate = Counter(
            "lifecycle_events_duplicate", "Events dropped as duplicates of an already applied event_id", registry=r
        )
        self.events_opted_out = Counter(
            "lifecycle_events_opted_out", "Events of users who opted out of automated scoring (dropped)", registry=r
        )
        self.events_rejected = Counter(
            "lifecycle_events_rejected", "Events rejected to the dead-letter store, by reason", ["reason"], registry=r
        )
        for reason in RejectReason:
            self.events_rejected.labels(reason=reason.value)
        self.batches = Counter("lifecycle_batches", "Batches processed, by step", ["step"], registry=r)
        self.rows_scored = Counter("lifecycle_rows_scored", "Feature rows scored by the model", registry=r)
        self.nonfinite_rows = Counter(
            "lifecycle_nonfinite_feature_rows", "Feature rows with NaN/inf values (zeroed before scoring)", registry=r
        )
        self.scoring_seconds = Histogram(
            "lifecycle_scoring_seconds", "Model latency per micro-batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.scoring_batch_rows = Histogram(
            "lifecycle_scoring_batch_rows", "Rows per scoring micro-batch", buckets=_ROW_BUCKETS, registry=r
        )
        self.rows_written = Counter("lifecycle_rows_written", "Rows written to the store", ["table"], registry=r)
        self.sink_seconds = Histogram(
            "lifecycle_sink_write_seconds", "Store insert latency", ["table"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.sink_errors = Counter(
            "lifecycle_sink_errors", "Store inserts that failed for good (the worker stops)", ["table"], registry=r
        )
        self.consent_loaded = Gauge(
            "lifecycle_consent_loaded",
            "1 once the consent list (opt-outs) is loaded; 0 while the pipeline waits for it, scoring nothing",
            registry=r,
        )
        self.store_up = Gauge(
            "lifecycle_store_up",
            "1 while the store takes inserts, 0 from an insert's first transient failure until one succeeds",
            registry=r,
        )
        self.store_up.set(1)
        self.store_retries = Counter(
            "lifecycle_store_retries",
            "Failed insert attempts retried while the store was unavailable (transient errors)",
            ["table"],
            registry=r,
        )
        self.freshness = Histogram(
            "lifecycle_score_freshness_seconds",
            "Wall time from an event's timestamp to its score being written",
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.pipeline_latency = Histogram(
            "lifecycle_pipeline_latency_seconds",
            "Wall time from reading a batch to writing its scores",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.watermark = Gauge(
            "lifecycle_watermark_seconds",
            "Shard event clock: the last closed event-time tick (unix s)",
            ["shard"],
            registry=r,
        )
        self.users_in_state = Gauge("lifecycle_users_in_state", "Users held in shard state", ["shard"], registry=r)
        self.users_evicted = Counter(
            "lifecycle_users_evicted",
            "Users evicted from shard state: churned and silent for longer than LIFECYCLE_CHURNED_RETENTION_SECONDS",
            registry=r,
        )
        self.state_bytes = Gauge(
            "lifecycle_state_bytes", "Bytes of the shard's per-user arrays (allocated rows, not the index)", ["shard"],
            registry=r,
        )  # fmt: skip
        self.timer_rows = Counter(
            "lifecycle_silence_timer_rows", "Users re-evaluated by rule timers (days_since_* thresholds)", registry=r
        )
        self.refresh_rows = Counter(
            "lifecycle_refresh_rows", "Users re-evaluated by the event-time refresh (every live user per interval)",
            registry=r,
        )  # fmt: skip
        self.score_staleness = Gauge(
            "lifecycle_score_staleness_seconds",
            "Event-time age of live users' scores at the shard clock: the oldest (stat=max) and the 99th percentile",
            ["shard", "stat"],
            registry=r,
        )
        self.events_resumed = Counter(
            "lifecycle_events_resumed",
            "Events read by an earlier run and restored with the state, waiting for their tick (they count as read "
            "there, and as applied here)",
            registry=r,
        )
        self.events_held = Gauge(
            "lifecycle_events_held", "Events read and waiting for their event-time tick to close", ["shard"], registry=r
        )
        self.transitions = Counter(
            "lifecycle_stage_transitions", "Stage transitions written", ["from_stage", "to_stage"], registry=r
        )
        self.actions = Counter(
            "lifecycle_actions",
            "Next-best actions granted by the playbook (after cooldowns and daily caps)",
            ["action"],
            registry=r,
        )
        self.model_info = Info("lifecycle_model", "Model artifact in use", registry=r)
        self.build_info = Info("lifecycle_build", "Build information", registry=r)
        self.build_info.info(build_labels())
        self.scoring_device = Gauge(
            "lifecycle_scoring_device", "1 for the device scoring runs on", ["device"], registry=r
        )
        self.kafka_lag = Gauge(
            "lifecycle_kafka_consumer_lag",
            "Kafka messages behind the partition's high watermark (consumer lag)",
            ["topic", "partition"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "lifecycle_drift_psi",
            "Population stability index of a score or feature against the model's training reference",
            ["kind", "name"],
            registry=r,
        )
        self.drift_rows = Gauge(
            "lifecycle_drift_window_rows",
            "Effective scored rows in the drift window (exponentially decayed count)",
            registry=r,
        )
        for table in TABLES:
            self.rows_written.labels(table=table)
            self.sink_errors.labels(table=table)
            self.store_retries.labels(table=table)
        # CPU, memory, open files of this process (process_*), on the same endpoint.
        ProcessCollector(registry=r)
        # Scoring engine (pipelines/scoring/scorer.py, docs/scoring.md).
        self.scoring_queue_delay = Histogram(
            "lifecycle_scoring_queue_delay_seconds",
            "Wait of a micro-batch's oldest rows between reaching the scorer and their micro-batch starting",
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.scoring_oom_splits = Counter(
            "lifecycle_scoring_oom_splits",
            "Micro-batches halved and retried after the device ran out of memory",
            registry=r,
        )
        self.scoring_fallbacks = Counter(
            "lifecycle_scoring_fallbacks",
            "Switches of scoring to the CPU after the configured device failed (at load or at a call)",
            registry=r,
        )


def build_labels() -> dict[str, str]:
    """Versions of this build and of the runtime pieces that change its behaviour."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "version": version("lifecycle-scoring"),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "torch": version("torch"),
    }


def serve(registry: CollectorRegistry, host: str, port: int) -> None:
    """Expose ``registry`` on http://host:port/metrics (daemon thread). Port 0 disables it."""
    if port:
        start_http_server(port, addr=host, registry=registry)
