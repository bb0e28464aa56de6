"""Live observability test: a real Prometheus scrapes a real pipeline run; every dashboard and alert query
is evaluated against it, and every ClickHouse panel query against the store the run wrote.

A metric renamed or dropped in code leaves a panel or an alert input without data, and fails here.
"""

from __future__ import annotations

import calendar
import math
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prometheus_client import CollectorRegistry

from pipelines.flow.runner import run_pipeline
from pipelines.io.store.base import StoreError
from pipelines.io.store.chdb import ChdbStore
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.settings import Settings
from tests.infra.dashboards import (
    CLICKHOUSE_TYPE,
    KAFKA_ONLY,
    PROMETHEUS_TYPE,
    RULE_FILES,
    alert_rules,
    expand_clickhouse,
    expand_promql,
    metric_name,
    panel_queries,
    vector_selectors,
)
from tests.support.events import line
from tests.support.prometheus import PrometheusServer, free_port, require_prometheus

pytestmark = pytest.mark.integration

USERS, DAYS = 600, 30
BATCH_EVENTS = 500
#: Pause per source batch: the run then spans several 1 s scrapes, so rate() and histogram_quantile()
#: over the run have at least two samples to work with, however fast the machine.
PACE_S = 0.2
#: Warning/critical alerts whose condition may hold at the end of this test's run, each with why; any other
#: that holds fails the test (the staleness gauge is sampled every 5 wall seconds, so whether its spike is
#: seen varies from run to run: these are allowed, not required). Open findings:
#: the run replays 30 days of history in seconds, which the freshness SLO rightly calls a backfill; a shard's
#: oldest live score climbs to ~5.8 days of event time over four consecutive batches mid-run (refresh due
#: daily: not yet explained); the scores of a 30-day cold start differ from the artifact's steady-state
#: reference (PSI ~0.5 on churn_risk and purchase_propensity).
EXPECTED_FIRING = {
    "LifecycleScoreFreshnessSLOBreach": "a backfill: 30 days of events replayed in seconds (the rule says so)",
    "LifecycleScoreDrift": "open: a 30-day cold start against a steady-state reference",
}
#: Panels whose value after a finished run is known exactly.
EXACT = {"Targets up": 1.0, "Unaccounted events": 0.0}
BAD_LINES = [
    b"{not json",
    line(type="teleport", user_id="x1"),
    line(type="order", amount=-1.0, user_id="x2"),
]


def _events_file(tmp_path: Path) -> tuple[Path, int]:
    """Simulated events with dead letters spread through the file (so reject rates move during the run)."""
    sim = simulate(SimConfig(users=USERS, days=DAYS))
    path = tmp_path / "events.jsonl"
    write_jsonl(sim.events, path)
    good = path.read_bytes().splitlines()
    step = len(good) // (len(BAD_LINES) + 1)
    mixed: list[bytes] = []
    for i, bad in enumerate(BAD_LINES):
        mixed += good[i * step : (i + 1) * step] + [bad]
    mixed += good[len(BAD_LINES) * step :]
    path.write_bytes(b"\n".join(mixed) + b"\n")
    return path, int(sim.events["ts"].cast(pl.Int64).to_numpy().min())


def _rfc3339(ts: str) -> float:
    """Prometheus timestamps ("2026-11-24T00:30:01.123456789Z") as unix seconds."""
    head, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def _wait_for_rule_evaluation(prom: PrometheusServer, *, after: float, timeout_s: float = 15.0) -> None:
    """Until every rule group was evaluated after ``after`` (so alert states reflect the final scrape)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        groups = prom.api("rules")["groups"]
        if groups and all(_rfc3339(g["lastEvaluation"]) > after + 1 for g in groups):
            return
        time.sleep(0.2)
    raise AssertionError(f"rule groups not evaluated within {timeout_s} s: {prom.log_tail()}")


def _fmt(result: list[dict[str, Any]]) -> str:
    parts = []
    for r in result[:4]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k not in ("job", "instance"))
        parts.append(f"{{{labels}}} {float(r['value'][1]):.6g}")
    return "; ".join(parts) + (f"; ... ({len(result)} series)" if len(result) > 4 else "")


def test_every_dashboard_and_alert_query_has_data_from_a_real_scraped_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t_start = time.perf_counter()
    bins = require_prometheus()
    port = free_port()
    registry = CollectorRegistry()
    store_path = tmp_path / "store.chdb"
    settings = Settings(
        store=f"chdb://{store_path}",
        metrics_port=port,
        shards=2,
        batch_events=BATCH_EVENTS,
        epoch_seconds=1.0,
    )
    report: list[str] = []
    with PrometheusServer(bins.prometheus, [f"127.0.0.1:{port}"], rule_files=RULE_FILES) as prom:
        events_path, first_event_ms = _events_file(tmp_path)  # while Prometheus picks up its target
        settings = settings.model_copy(update={"input": str(events_path)})
        prom.wait_for_scrape_attempts()
        t_run = time.perf_counter()
        res = run_pipeline(settings, registry=registry, serve_metrics=True, on_batch=lambda n: time.sleep(PACE_S))
        run_s = time.perf_counter() - t_run
        assert res.events_applied + res.duplicates + sum(res.rejected.values()) == res.events_in > 0
        assert res.rejected == {"malformed_json": 1, "unknown_event_type": 1, "negative_amount": 1}
        # the flow itself sets the drift gauges (the default artifact carries its reference): the test never does
        psi = [s for m in registry.collect() for s in m.samples if s.name == "lifecycle_drift_psi"]
        drift = {(s.labels.get("kind"), s.labels.get("name")) for s in psi}
        assert len(drift) >= 3, f"the flow set no drift gauges ({len(drift)} series)"

        # Prometheus has the run's final values, drift included, and has evaluated the rules since.
        written = res.rows_written["user_scores"]
        prom.wait_for(
            'lifecycle_rows_written_total{job="lifecycle", table="user_scores"}',
            predicate=lambda r: float(r[0]["value"][1]) == written,
        )
        prom.wait_for('count(lifecycle_drift_psi{job="lifecycle"})', predicate=lambda r: float(r[0]["value"][1]) >= 3)
        _wait_for_rule_evaluation(prom, after=time.time())
        report.append(f"run: {res.events_in} events in {run_s:.1f} s; drift gauges from the flow: {len(drift)} series")

        # every rule loaded and evaluating without error
        names = {r.name for r in alert_rules()}
        loaded = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"]}
        assert names == set(loaded), f"rules loaded by Prometheus differ from the files: {names ^ set(loaded)}"
        bad = {n: (r["health"], r.get("lastError")) for n, r in loaded.items() if r["health"] != "ok"}
        assert not bad, f"rules failing to evaluate: {bad}"

        failures: list[str] = []
        # ---------------------------------------------------------------- dashboard panels (Prometheus)
        for q in panel_queries():
            if q.ds_type != PROMETHEUS_TYPE:
                continue
            expr = expand_promql(q.query)
            result = prom.query(expr)
            kafka_only = {metric_name(s) for s in vector_selectors(q.query)} <= KAFKA_ONLY
            if kafka_only:
                for name in {metric_name(s) for s in vector_selectors(q.query)}:
                    meta = prom.api("metadata", metric=name)
                    if name not in meta:
                        failures.append(f"{q.label}: {name} unknown to Prometheus (renamed in code?)")
                report.append(
                    f"{q.label}: {expr}\n    = {_fmt(result) or '(no series: Kafka input only; metadata ok)'}"
                )
                continue
            finite = [r for r in result if math.isfinite(float(r["value"][1]))]
            report.append(f"{q.label}: {expr}\n    = {_fmt(result) or 'NO DATA'}")
            if not finite:
                failures.append(f"{q.label}: no finite value for {expr} -> {result}")
            elif q.title in EXACT and {float(r["value"][1]) for r in result} != {EXACT[q.title]}:
                failures.append(f"{q.label}: expected {EXACT[q.title]}, got {_fmt(result)}")

        # ---------------------------------------------------------------- alert rules
        for rule in alert_rules():
            result = prom.query(rule.expr)  # raises on an evaluation error
            report.append(f"alert {rule.name}: {'FIRING-CONDITION TRUE' if result else 'condition false'}")
            severity = rule.labels.get("severity")
            if result and severity in ("warning", "critical") and rule.name not in EXPECTED_FIRING:
                failures.append(f"alert {rule.name} ({severity}) fires on a healthy run: {_fmt(result)}")
            for sel in vector_selectors(rule.expr):
                name = metric_name(sel)
                series = prom.query(sel)
                if not series and name in KAFKA_ONLY:
                    if name not in prom.api("metadata", metric=name):
                        failures.append(f"alert {rule.name}: {name} unknown to Prometheus (renamed in code?)")
                    continue
                report.append(f"    input {sel} = {_fmt(series) or 'NO DATA'}")
                if not series:
                    failures.append(f"alert {rule.name}: input {sel} has no series")

    # -------------------------------------------------------------------- ClickHouse panels on the run's store
    now = int(time.time())
    store = ChdbStore(store_path)
    try:
        for q in panel_queries():
            if q.ds_type != CLICKHOUSE_TYPE:
                continue
            sql = expand_clickhouse(q.query, start_s=first_event_ms // 1000 - 86_400, end_s=now, interval_s=86_400)
            try:
                rows = store.query(sql).to_pylist()
            except StoreError as err:
                failures.append(f"{q.label}: {err}")
                continue
            report.append(f"{q.label}: {sql}\n    = {rows[:3]}{' ...' if len(rows) > 3 else ''} ({len(rows)} rows)")
            if not rows:
                failures.append(f"{q.label}: no rows for {sql}")
    finally:
        store.close()

    report.append(f"live observability test: {time.perf_counter() - t_start:.1f} s")
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert not failures, "\n".join(failures)
