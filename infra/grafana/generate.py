"""Generate the Grafana dashboards in ``infra/grafana/dashboards/`` (run: ``python infra/grafana/generate.py``).

The JSON files are committed (Grafana provisions them from disk); this script is
their source, so every panel has the same datasource, selector and layout
conventions. ``tests/infra/test_dashboards.py`` fails when the committed JSON
differs from what this script writes, and ``tests/integration/test_observability.py``
evaluates every query against a real Prometheus that scraped a real run, and
every ClickHouse query against the store that run wrote.

Conventions: Prometheus panels select ``job="lifecycle", instance=~"$instance"``
and use ``$__rate_interval``; ClickHouse panels read ``user_scores FINAL`` and
``stage_transitions FINAL`` (one row per key) and use the plugin's
``$__timeFilter``/``$__timeInterval`` macros. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = {"type": "prometheus", "uid": "lifecycle-prometheus"}
CH = {"type": "grafana-clickhouse-datasource", "uid": "lifecycle-clickhouse"}
SEL = 'job="lifecycle", instance=~"$instance"'
RI = "$__rate_interval"
INSTANCES = 'label_values(lifecycle_build_info{job="lifecycle"}, instance)'

Panel = dict[str, Any]


def prom(expr: str, legend: str = "", *, ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"refId": ref, "datasource": PROM, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t.update(instant=True, range=False, format="table")
    else:
        t.update(instant=False, range=True)
    return t


def quantile(q: float, histogram: str, by: str = "le") -> str:
    """``histogram_quantile`` of a histogram's buckets over the selector and ``$__rate_interval``."""
    return f"histogram_quantile({q}, sum by ({by}) (rate({histogram}_bucket{{{SEL}}}[{RI}])))"


def _quantile_targets(metric: str) -> list[dict[str, Any]]:
    """p50/p95/p99 of a histogram, one target each (refs A, B, C)."""
    return [prom(quantile(q, metric), f"p{int(q * 100)}", ref=r) for q, r in ((0.5, "A"), (0.95, "B"), (0.99, "C"))]


def sql(raw: str, *, timeseries: bool = False) -> dict[str, Any]:
    return {
        "refId": "A",
        "datasource": CH,
        "editorType": "sql",
        "format": 0 if timeseries else 1,
        "queryType": "timeseries" if timeseries else "table",
        "rawSql": " ".join(raw.split()),
    }


class Board:
    """Panels of one dashboard, laid out left to right in rows of 24 columns."""

    def __init__(self, uid: str, title: str, description: str, *, time_from: str = "now-6h") -> None:
        self.uid, self.title, self.description, self.time_from = uid, title, description, time_from
        self.panels: list[Panel] = []
        self.x = self.y = self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = self.row_h = 0

    def add(
        self,
        kind: str,
        title: str,
        targets: list[dict[str, Any]],
        *,
        w: int = 8,
        h: int = 8,
        unit: str = "short",
        description: str = "",
        options: dict[str, Any] | None = None,
        thresholds: list[tuple[float | None, str]] | None = None,
        decimals: int | None = None,
    ) -> None:
        if self.x + w > 24:
            self._newline()
        ds = targets[0]["datasource"]
        defaults: dict[str, Any] = {"unit": unit}
        if decimals is not None:
            defaults["decimals"] = decimals
        if thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in thresholds]}
            defaults["color"] = {"mode": "thresholds"}
        self.panels.append(
            {
                "id": len(self.panels) + 1,
                "type": kind,
                "title": title,
                "description": description,
                "datasource": ds,
                "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
                "targets": targets,
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": options or {},
            }
        )
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["lifecycle-scoring"],
            "timezone": "utc",
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "time": {"from": self.time_from, "to": "now"},
            "annotations": {"list": []},
            "links": [
                {"title": t, "type": "link", "url": f"/d/{u}", "targetBlank": False}
                for u, t in (
                    ("lifecycle-pipeline-health", "Pipeline health"),
                    ("lifecycle-overview", "Lifecycle overview"),
                    ("lifecycle-model", "Model quality & drift"),
                )
                if u != self.uid
            ],
            "templating": {
                "list": [
                    {
                        "name": "instance",
                        "label": "pipeline",
                        "type": "query",
                        "datasource": PROM,
                        "query": {"query": INSTANCES, "refId": "V"},
                        "definition": INSTANCES,
                        "refresh": 2,
                        "includeAll": True,
                        "multi": True,
                        "allValue": ".+",
                        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                        "sort": 1,
                    }
                ]
            },
            "panels": self.panels,
        }


PSI_STEPS: list[tuple[float | None, str]] = [(None, "green"), (0.1, "yellow"), (0.25, "red")]


def pipeline_health() -> Board:
    b = Board(
        "lifecycle-pipeline-health",
        "lifecycle-scoring / Pipeline health",
        "Does the pipeline keep up? Ingest, rejects, freshness, lag, scoring and sink latency, state size.",
    )
    b.row("At a glance")
    b.add(
        "stat",
        "Targets up",
        [prom(f"sum(up{{{SEL}}})", instant=True)],
        w=4,
        h=4,
        description="Scraped pipeline processes that answer (alert: LifecyclePipelineDown).",
        thresholds=[(None, "red"), (1, "green")],
    )
    b.add("stat", "Events in /s", [prom(f"sum(rate(lifecycle_events_in_total{{{SEL}}}[{RI}]))")], w=4, h=4, unit="ops")
    b.add(
        "stat",
        "Reject ratio",
        [
            prom(
                f"sum(rate(lifecycle_events_rejected_total{{{SEL}}}[{RI}])) / "
                f"sum(rate(lifecycle_events_in_total{{{SEL}}}[{RI}]))"
            )
        ],
        w=4,
        h=4,
        unit="percentunit",
        decimals=2,
        thresholds=[(None, "green"), (0.02, "orange"), (0.1, "red")],
        description="Share of input events written to rejected_events (alerts above 2 % and 10 %).",
    )
    b.add(
        "stat",
        "Score freshness p95",
        [prom(quantile(0.95, "lifecycle_score_freshness_seconds"))],
        w=4,
        h=4,
        unit="s",
        thresholds=[(None, "green"), (60, "red")],
        description="Wall time from a user's newest event to their score written (SLO: 95 % within 60 s).",
    )
    b.add(
        "stat",
        "Kafka consumer lag",
        [prom(f"sum(lifecycle_kafka_consumer_lag{{{SEL}}})")],
        w=4,
        h=4,
        description="Messages behind the high watermarks, all partitions (Kafka input only).",
    )
    b.add("stat", "Users in state", [prom(f"sum(lifecycle_users_in_state{{{SEL}}})")], w=4, h=4)

    b.row("Throughput and input quality")
    b.add(
        "timeseries",
        "Events /s",
        [
            prom(f"sum by (source) (rate(lifecycle_events_in_total{{{SEL}}}[{RI}]))", "in ({{source}})", ref="A"),
            prom(f"sum(rate(lifecycle_events_applied_total{{{SEL}}}[{RI}]))", "applied", ref="B"),
            prom(f"sum(rate(lifecycle_events_rejected_total{{{SEL}}}[{RI}]))", "rejected", ref="C"),
            prom(f"sum(rate(lifecycle_events_duplicate_total{{{SEL}}}[{RI}]))", "duplicate", ref="D"),
            prom(f"sum(rate(lifecycle_events_opted_out_total{{{SEL}}}[{RI}]))", "opted out", ref="E"),
        ],
        unit="ops",
        description="Read = applied + duplicate + opted out + rejected; the gap is events in flight.",
    )
    b.add(
        "timeseries",
        "Rejects /s by reason",
        [
            prom(f"sum by (reason) (rate(lifecycle_events_rejected_total{{{SEL}}}[{RI}]))", "{{reason}}"),
        ],
        unit="ops",
        description="Dead letters by reason ('late' = beyond the allowed lateness). Rows: rejected_events.",
    )
    b.add(
        "timeseries",
        "Unaccounted events",
        [
            prom(
                f"sum by (instance) (lifecycle_events_in_total{{{SEL}}})"
                f" + sum by (instance) (lifecycle_events_resumed_total{{{SEL}}})"
                f" - sum by (instance) (lifecycle_events_applied_total{{{SEL}}})"
                f" - sum by (instance) (lifecycle_events_duplicate_total{{{SEL}}})"
                f" - sum by (instance) (lifecycle_events_opted_out_total{{{SEL}}})"
                f" - sum by (instance) (lifecycle_events_rejected_total{{{SEL}}})"
                f" - sum by (instance) (lifecycle_events_held{{{SEL}}})",
                "{{instance}}: in + resumed - applied - duplicate - opted out - rejected - held",
            )
        ],
        description="Events read (or restored with the state) but neither applied, dropped (duplicates, opt-outs), "
        "dead-lettered nor waiting for their tick, since process start: 0 whenever no batch is in flight. Anything "
        "else lost events.",
    )
    b.add(
        "timeseries",
        "Batches /s by step",
        [
            prom(f"sum by (step) (rate(lifecycle_batches_total{{{SEL}}}[{RI}]))", "{{step}}"),
        ],
        unit="ops",
    )
    b.add(
        "timeseries",
        "Kafka consumer lag by partition",
        [
            prom(f"sum by (partition) (lifecycle_kafka_consumer_lag{{{SEL}}})", "partition {{partition}}"),
        ],
        description="Alert LifecycleKafkaLagGrowing when the total grows for 15 min. Empty for file/simulated input.",
    )
    b.add(
        "timeseries",
        "Event clock behind wall clock",
        [
            prom(f"time() - max by (shard) (lifecycle_watermark_seconds{{{SEL}}})", "{{shard}}"),
        ],
        unit="s",
        description="Wall clock minus each shard's last closed event-time tick. Large while replaying history.",
    )
    b.add(
        "timeseries",
        "Events waiting for their tick",
        [prom(f"sum by (shard) (lifecycle_events_held{{{SEL}}})", "{{shard}}")],
        unit="short",
        description="Events read but not yet applied: their event-time tick is still open (docs/event-time.md). "
        "About one tick of events per stream; more when partitions drift apart in event time.",
    )

    b.row("Latency and freshness")
    b.add(
        "timeseries",
        "Score freshness (event → score written)",
        _quantile_targets("lifecycle_score_freshness_seconds"),
        unit="s",
    )
    b.add(
        "timeseries",
        "Pipeline latency (batch read → scores written)",
        _quantile_targets("lifecycle_pipeline_latency_seconds"),
        unit="s",
    )
    b.add(
        "timeseries",
        "Score staleness in event time (oldest live user, p99)",
        [
            prom(f'max(lifecycle_score_staleness_seconds{{{SEL}, stat="max"}})', "oldest", ref="A"),
            prom(f'max(lifecycle_score_staleness_seconds{{{SEL}, stat="p99"}})', "p99", ref="B"),
        ],
        unit="s",
        description="Event-time age of live users' scores at the shard clock. The refresh keeps it under "
        "LIFECYCLE_REFRESH_SECONDS (churned users: LIFECYCLE_REFRESH_CHURNED_SECONDS); alert "
        "LifecycleScoresStale at twice the refresh interval.",
    )
    b.add(
        "timeseries",
        "Freshness SLO: share of scores within 60 s",
        [
            prom(
                f'sum(rate(lifecycle_score_freshness_seconds_bucket{{{SEL}, le="60.0"}}[{RI}])) / '
                f"sum(rate(lifecycle_score_freshness_seconds_count{{{SEL}}}[{RI}]))",
                "within 60 s",
            )
        ],
        unit="percentunit",
        thresholds=[(None, "red"), (0.95, "green")],
        description="Alert LifecycleScoreFreshnessSLOBreach below 95 % for 10 min.",
    )

    b.row("Scoring")
    b.add(
        "timeseries",
        "Rows scored /s",
        [
            prom(f"sum(rate(lifecycle_rows_scored_total{{{SEL}}}[{RI}]))", "scored", ref="A"),
            prom(f"sum(rate(lifecycle_silence_timer_rows_total{{{SEL}}}[{RI}]))", "rule timers", ref="B"),
            prom(f"sum(rate(lifecycle_refresh_rows_total{{{SEL}}}[{RI}]))", "refresh", ref="D"),
            prom(f"sum(rate(lifecycle_nonfinite_feature_rows_total{{{SEL}}}[{RI}]))", "non-finite features", ref="C"),
        ],
        unit="ops",
    )
    b.add(
        "timeseries",
        "Model latency per micro-batch",
        [
            prom(
                quantile(q, "lifecycle_scoring_seconds"),
                f"p{int(q * 100)}",
                ref=r,
            )
            for q, r in ((0.5, "A"), (0.95, "B"))
        ],
        unit="s",
    )
    b.add(
        "timeseries",
        "Rows per micro-batch (mean)",
        [
            prom(
                f"sum(rate(lifecycle_scoring_batch_rows_sum{{{SEL}}}[{RI}])) / "
                f"sum(rate(lifecycle_scoring_batch_rows_count{{{SEL}}}[{RI}]))",
                "rows",
            )
        ],
    )
    b.add(
        "timeseries",
        "Scoring queue delay",
        [
            prom(quantile(q, "lifecycle_scoring_queue_delay_seconds"), f"p{int(q * 100)}", ref=r)
            for q, r in ((0.5, "A"), (0.99, "B"))
        ],
        unit="s",
        description="How long a micro-batch's oldest rows waited in the scorer before their batch started "
        "(dynamic batching delay plus the batches ahead of it). See docs/scoring.md.",
    )
    b.add(
        "timeseries",
        "OOM splits and CPU fallbacks",
        [
            prom(f"sum(increase(lifecycle_scoring_oom_splits_total{{{SEL}}}[{RI}]))", "OOM splits", ref="A"),
            prom(f"sum(increase(lifecycle_scoring_fallbacks_total{{{SEL}}}[{RI}]))", "fallbacks to CPU", ref="B"),
        ],
        description="Micro-batches halved after the device ran out of memory, and switches of scoring to the "
        "CPU after the GPU failed (then lifecycle_scoring_device shows cpu). Both should be 0.",
    )

    b.row("Sink (ClickHouse)")
    b.add(
        "timeseries",
        "Rows written /s by table",
        [
            prom(f"sum by (table) (rate(lifecycle_rows_written_total{{{SEL}}}[{RI}]))", "{{table}}"),
        ],
        unit="ops",
    )
    b.add(
        "timeseries",
        "Insert latency p95 by table",
        [
            prom(
                quantile(0.95, "lifecycle_sink_write_seconds", "le, table"),
                "{{table}}",
            )
        ],
        unit="s",
    )
    b.add(
        "timeseries",
        "Failed inserts by table",
        [
            prom(f"sum by (table) (increase(lifecycle_sink_errors_total{{{SEL}}}[{RI}]))", "{{table}}"),
        ],
        description="Inserts that failed for good (LifecycleSinkErrors pages); the worker stops and resumes from its "
        "last snapshot. Transient failures are retried instead: see Store availability.",
    )
    b.add(
        "timeseries",
        "Store availability and insert retries",
        [
            prom(f"min by (instance) (lifecycle_store_up{{{SEL}}})", "store up {{instance}}", ref="A"),
            prom(
                f"sum by (table) (increase(lifecycle_store_retries_total{{{SEL}}}[{RI}]))", "retries {{table}}", ref="B"
            ),
        ],
        description="Store up: 1 while ClickHouse takes inserts, 0 while every insert fails transiently (refused, "
        "timed out, overloaded); LifecycleStoreDown pages after 5 min. Meanwhile the pipeline retries with backoff "
        "and reads no input (backpressure), losing nothing.",
    )

    b.row("State and process")
    b.add(
        "timeseries",
        "Users in state by shard",
        [
            prom(f"sum by (shard) (lifecycle_users_in_state{{{SEL}}})", "{{shard}}"),
        ],
    )
    b.add(
        "timeseries",
        "State memory and evictions",
        [
            prom(f"sum by (shard) (lifecycle_state_bytes{{{SEL}}}) / 2^20", "state MiB {{shard}}", ref="A"),
            prom(f"sum(rate(lifecycle_users_evicted_total{{{SEL}}}[{RI}]))", "evicted users /s", ref="B"),
        ],
        description="Bytes of each shard's per-user arrays, and churned users evicted after "
        "LIFECYCLE_CHURNED_RETENTION_SECONDS (their rows are reused). An id flood is refused as new_user_rate "
        "dead letters (Events /s, rejected).",
    )
    b.add(
        "timeseries",
        "Process CPU and memory",
        [
            prom(
                f"sum by (instance) (rate(process_cpu_seconds_total{{{SEL}}}[{RI}]))", "CPU cores {{instance}}", ref="A"
            ),
            prom(f"sum by (instance) (process_resident_memory_bytes{{{SEL}}}) / 2^30", "RSS GiB {{instance}}", ref="B"),
        ],
    )
    b.add(
        "table",
        "Build and device",
        [
            prom(f"lifecycle_build_info{{{SEL}}}", instant=True, ref="A"),
            prom(f"lifecycle_scoring_device{{{SEL}}} == 1", instant=True, ref="B"),
        ],
        description="Versions of this build and the torch device scoring runs on.",
    )
    return b


def lifecycle_overview() -> Board:
    b = Board(
        "lifecycle-overview",
        "lifecycle-scoring / Lifecycle overview",
        "Where users are in their lifecycle (ClickHouse: user_scores FINAL, stage_transitions FINAL) and how fast "
        "they move (Prometheus).",
        time_from="now-7d",
    )
    b.row("Stages now (ClickHouse, user_scores FINAL)")
    b.add(
        "piechart",
        "Stage distribution",
        [sql("SELECT stage, count() AS users FROM user_scores FINAL GROUP BY stage ORDER BY stage")],
        w=8,
        options={
            "reduceOptions": {"values": True, "calcs": ["lastNotNull"], "fields": "/^users$/"},
            "pieType": "donut",
            "legend": {"displayMode": "table", "placement": "right", "values": ["value", "percent"]},
        },
        description="new 导入期 · growing 成长期 · mature 成熟期 · dormant 休眠期 · churned 流失期",
    )
    b.add(
        "table",
        "Stage × value tier",
        [
            sql(
                "SELECT stage, countIf(tier = 'vip') AS vip, countIf(tier = 'regular') AS regular, "
                "countIf(tier = 'potential') AS potential, count() AS users FROM user_scores FINAL "
                "GROUP BY stage ORDER BY stage"
            )
        ],
        w=8,
    )
    b.add(
        "table",
        "Risk and propensity by stage",
        [
            sql(
                "SELECT stage, countIf(at_risk) AS at_risk_users, round(avg(churn_risk), 3) AS avg_churn_risk, "
                "round(avg(purchase_propensity), 3) AS avg_purchase_propensity FROM user_scores FINAL "
                "GROUP BY stage ORDER BY stage"
            )
        ],
        w=8,
        description="at_risk = 预流失, as the taxonomy defines it (lifecycle-5: active stage and churn risk >= 0.6).",
    )
    b.add(
        "stat",
        "At-risk users (预流失)",
        [
            sql(
                "SELECT countIf(at_risk) AS at_risk_users, countIf(at_risk AND tier = 'vip') AS at_risk_vips "
                "FROM user_scores FINAL"
            )
        ],
        w=8,
        h=5,
    )
    b.add(
        "table",
        "Top churn drivers of at-risk, dormant and churned users",
        [
            sql(
                "SELECT reason, count() AS users FROM user_scores FINAL ARRAY JOIN reasons AS reason "
                "WHERE at_risk OR stage IN ('dormant', 'churned') GROUP BY reason ORDER BY users DESC LIMIT 10"
            )
        ],
        w=16,
        h=5,
        description="Reason codes (strongest first per user), as the win-back playbooks see them.",
    )

    b.row("Transitions (ClickHouse, stage_transitions FINAL)")
    b.add(
        "timeseries",
        "Transitions into each stage",
        [
            sql(
                "SELECT $__timeInterval(at) AS time, to_stage, count() AS transitions FROM stage_transitions FINAL "
                "WHERE $__timeFilter(at) GROUP BY time, to_stage ORDER BY time",
                timeseries=True,
            )
        ],
        w=12,
        description="By event time of the transition (`at`): what marketing automation triggers on.",
    )
    b.add(
        "table",
        "Transition matrix (time range)",
        [
            sql(
                "SELECT from_stage, to_stage, count() AS users FROM stage_transitions FINAL WHERE $__timeFilter(at) "
                "GROUP BY from_stage, to_stage ORDER BY users DESC"
            )
        ],
        w=12,
        description="from_stage = 'none': the user's first stage.",
    )
    b.add(
        "table",
        "Dead letters by reason (time range)",
        [
            sql(
                "SELECT reason, count() AS events, max(received_at) AS last_seen FROM rejected_events FINAL "
                "WHERE $__timeFilter(received_at) GROUP BY reason ORDER BY events DESC"
            )
        ],
        w=12,
    )

    b.row("Transitions now (Prometheus)")
    b.add(
        "timeseries",
        "Transitions /s by from → to",
        [
            prom(
                f"sum by (from_stage, to_stage) (rate(lifecycle_stage_transitions_total{{{SEL}}}[{RI}]))",
                "{{from_stage}} → {{to_stage}}",
            )
        ],
        w=12,
        unit="ops",
    )
    b.add(
        "timeseries",
        "Transitions /s into each stage",
        [
            prom(
                f"sum by (to_stage) (rate(lifecycle_stage_transitions_total{{{SEL}}}[{RI}]))",
                "{{to_stage}}",
            )
        ],
        w=12,
        unit="ops",
        description="Spikes into dormant/churned: silence timers firing for a cohort.",
    )

    b.row("Next-best actions (playbook)")
    b.add(
        "timeseries",
        "Actions granted /s by action",
        [prom(f"sum by (action) (rate(lifecycle_actions_total{{{SEL}}}[{RI}]))", "{{action}}")],
        w=12,
        unit="ops",
        description="After cooldowns, quiet hours and daily caps (docs/playbooks.md). A flat line at a cap's "
        "rate means the daily cap is binding.",
    )
    b.add(
        "table",
        "Current action per user, and what is still to export",
        [
            sql(
                "SELECT action, count() AS users, countIf(action_at IS NOT NULL AND "
                "(user_id, action, assumeNotNull(action_at)) NOT IN "
                "(SELECT user_id, action, action_at FROM action_exports FINAL)) AS not_exported "
                "FROM user_scores FINAL GROUP BY action ORDER BY users DESC"
            )
        ],
        w=12,
        description="not_exported: grants the exporters have not recorded in action_exports yet (action queue).",
    )
    return b


def model_quality() -> Board:
    b = Board(
        "lifecycle-model",
        "lifecycle-scoring / Model quality & drift",
        "Drift of scores and key features against the model's training reference (PSI), score distributions, "
        "model version and device.",
        time_from="now-24h",
    )
    b.row("Drift (PSI vs training reference; < 0.1 stable, > 0.25 major shift)")
    b.add(
        "bargauge",
        "Score PSI",
        [prom(f'max by (name) (lifecycle_drift_psi{{{SEL}, kind="score"}})', "{{name}}", instant=True)],
        w=8,
        decimals=3,
        thresholds=PSI_STEPS,
        description="Alert LifecycleScoreDrift above 0.25 for 1 h.",
    )
    b.add(
        "bargauge",
        "Feature PSI",
        [prom(f'max by (name) (lifecycle_drift_psi{{{SEL}, kind="feature"}})', "{{name}}", instant=True)],
        w=8,
        decimals=3,
        thresholds=PSI_STEPS,
        description="Alert LifecycleFeatureDrift above 0.25 for 2 h.",
    )
    b.add(
        "stat",
        "Rows in drift window",
        [prom(f"sum(lifecycle_drift_window_rows{{{SEL}}})")],
        w=8,
        description="Effective (decayed) scored rows behind the PSI values.",
    )
    b.add(
        "timeseries",
        "PSI over time",
        [prom(f"max by (kind, name) (lifecycle_drift_psi{{{SEL}}})", "{{kind}} {{name}}")],
        w=24,
        decimals=3,
        thresholds=PSI_STEPS,
    )

    b.row("Scores (ClickHouse, user_scores FINAL)")
    b.add(
        "barchart",
        "Churn risk distribution",
        [
            sql(
                "SELECT toString(floor(churn_risk * 10) / 10) AS churn_risk_from, count() AS users "
                "FROM user_scores FINAL GROUP BY churn_risk_from ORDER BY churn_risk_from"
            )
        ],
        w=12,
    )
    b.add(
        "barchart",
        "Purchase propensity distribution",
        [
            sql(
                "SELECT toString(floor(purchase_propensity * 10) / 10) AS propensity_from, count() AS users "
                "FROM user_scores FINAL GROUP BY propensity_from ORDER BY propensity_from"
            )
        ],
        w=12,
    )
    b.add(
        "table",
        "Scores by model version",
        [
            sql(
                "SELECT model_version, count() AS users, round(avg(churn_risk), 3) AS avg_churn_risk, "
                "round(avg(purchase_propensity), 3) AS avg_purchase_propensity, max(scored_at) AS last_scored "
                "FROM user_scores FINAL GROUP BY model_version ORDER BY last_scored DESC"
            )
        ],
        w=12,
    )

    b.row("Model runtime (Prometheus)")
    b.add(
        "table",
        "Model in use",
        [prom(f"lifecycle_model_info{{{SEL}}}", instant=True)],
        w=12,
        description="Model version and feature schema hash of the loaded artifact.",
    )
    b.add(
        "timeseries",
        "Non-finite feature rows /s",
        [prom(f"sum(rate(lifecycle_nonfinite_feature_rows_total{{{SEL}}}[{RI}]))", "rows")],
        w=12,
        unit="ops",
        description="Rows with NaN/inf features, zeroed before scoring. Should be 0.",
    )
    b.add(
        "timeseries",
        "Scoring device",
        [prom(f"max by (device) (lifecycle_scoring_device{{{SEL}}})", "{{device}}")],
        w=12,
    )
    return b


BOARDS = (pipeline_health, lifecycle_overview, model_quality)
FILES = {
    "lifecycle-pipeline-health": "pipeline-health.json",
    "lifecycle-overview": "lifecycle-overview.json",
    "lifecycle-model": "model-quality.json",
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for make in BOARDS:
        board = make()
        out[FILES[board.uid]] = json.dumps(board.json(), indent=2, ensure_ascii=False) + "\n"
    return out


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text, encoding="utf-8")
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
