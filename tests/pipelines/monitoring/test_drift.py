"""Drift references and the drift monitor (pure logic, a fresh registry per test).

The binning and PSI maths are ``models.reference``'s (tested in ``tests/models/test_reference.py``).
"""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import models.reference
from models.reference import bin_counts, psi
from pipelines.contract.decode import decode_batch
from pipelines.contract.events import EventColumns, RawBatch
from pipelines.core.features import FEATURE_NAMES
from pipelines.monitoring import drift
from pipelines.monitoring.drift import (
    DRIFT_FEATURES,
    SCORE_NAMES,
    DriftMonitor,
    DriftReference,
    build_reference,
)
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.offline.drift_reference import reference_from_events, streamed_rows
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches

F = len(FEATURE_NAMES)


def _rows(n: int, seed: int = 0, shift: float = 0.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 3.0, size=(n, F)).astype(np.float32) + shift
    x[:, FEATURE_NAMES.index("coupon_redeem_rate")] = rng.choice([0.0, 0.0, 0.0, 0.5, 1.0], n)  # ties
    scores: dict[str, np.ndarray] = {"churn_risk": rng.beta(2, 5, n).astype(np.float32)}
    scores["purchase_propensity"] = rng.beta(3, 3, n).astype(np.float32)
    if shift:
        scores["churn_risk"] = np.clip(scores["churn_risk"] + shift / 10, 0, 1).astype(np.float32)
    return x, scores


def _psi_values(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.labels["kind"], s.labels["name"]): s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "lifecycle_drift_psi"
    }


def test_reference_round_trips_through_artifact_json() -> None:
    x, s = _rows(5000)
    ref = build_reference(x, s)
    assert [c.name for c in ref.columns] == [*SCORE_NAMES, *DRIFT_FEATURES]
    assert all(math.isclose(sum(c.expected), 1.0) for c in ref.columns)
    meta = json.loads(json.dumps({"model_version": "m", **{"drift_reference": ref.to_meta()}}))
    assert DriftReference.from_meta(meta) == ref
    assert DriftReference.from_meta({"model_version": "m"}) is None


def test_drift_has_no_binning_or_psi_code_of_its_own() -> None:
    assert drift.bin_counts is models.reference.bin_counts
    assert drift.quantile_edges is models.reference.quantile_edges
    assert drift.population_stability_index is models.reference.population_stability_index
    src = inspect.getsource(drift)
    assert "searchsorted" not in src and "np.quantile" not in src and "np.log" not in src


def test_the_artifact_reference_block_and_the_live_gauges_bin_and_score_alike() -> None:
    x, s = _rows(20_000, seed=6)
    live = build_reference(x, s)  # artifact.json "drift_reference": what DriftMonitor reads
    block = models.reference.build_reference(  # artifact.json "reference"
        s, {name: x[:, FEATURE_NAMES.index(name)] for name in DRIFT_FEATURES}, population="test"
    )
    registry = CollectorRegistry()
    mon = DriftMonitor(live, PipelineMetrics(registry), min_rows=1000)
    x2, s2 = _rows(5000, seed=7, shift=2.0)
    mon.observe(x2, s2)  # one batch: the monitor's counts are exactly this batch's
    gauges = _psi_values(registry)
    for col, counts in zip(live.columns, mon._counts, strict=True):
        bins = block["scores" if col.kind == "score" else "features"][col.name]
        assert list(col.edges) == bins["edges"] and list(col.expected) == bins["fractions"]
        values = s2[col.name] if col.kind == "score" else x2[:, FEATURE_NAMES.index(col.name)]
        assert counts.tolist() == bin_counts(values, bins["edges"]).tolist()
        assert gauges[(col.kind, col.name)] == psi(bins, values)
    assert gauges[("feature", "days_since_active")] > 0.25  # a real shift, not a comparison of zeros


def test_monitor_reports_near_zero_psi_for_the_reference_population_and_flags_a_shift() -> None:
    x, s = _rows(20_000, seed=1)
    ref = build_reference(x, s)
    same = CollectorRegistry()
    mon = DriftMonitor(ref, PipelineMetrics(same), min_rows=1000)
    x2, s2 = _rows(20_000, seed=2)
    for i in range(0, 20_000, 2000):
        mon.observe(x2[i : i + 2000], {k: v[i : i + 2000] for k, v in s2.items()})
    psi = _psi_values(same)
    assert set(psi) == {("score", n) for n in SCORE_NAMES} | {("feature", n) for n in DRIFT_FEATURES}
    assert max(psi.values()) < 0.02

    shifted = CollectorRegistry()
    mon = DriftMonitor(ref, PipelineMetrics(shifted), min_rows=1000)
    x3, s3 = _rows(5000, seed=3, shift=4.0)
    mon.observe(x3, s3)
    psi = _psi_values(shifted)
    assert psi[("feature", "days_since_active")] > 0.25 and psi[("score", "churn_risk")] > 0.1
    assert psi[("feature", "coupon_redeem_rate")] < 0.02  # that column did not move


def test_monitor_publishes_nothing_before_min_rows_and_forgets_old_traffic() -> None:
    x, s = _rows(10_000, seed=4)
    ref = build_reference(x, s)
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    mon = DriftMonitor(ref, metrics, min_rows=500, half_life_rows=1000)
    mon.observe(x[:100], {k: v[:100] for k, v in s.items()})
    assert _psi_values(registry) == {} and mon.psi() == {}
    shifted_x, shifted_s = _rows(2000, seed=5, shift=6.0)
    mon.observe(shifted_x, shifted_s)
    assert mon.psi()[("feature", "days_since_active")] > 0.25
    for i in range(10):  # 10 half-lives of reference-like traffic wash the shift out
        xb, sb = _rows(1000, seed=10 + i)
        mon.observe(xb, sb)
    assert mon.psi()[("feature", "days_since_active")] < 0.05
    assert mon.rows == pytest.approx(2000, rel=0.01)  # decayed window: about 2 half-lives of rows


def test_monitor_rejects_a_reference_naming_unknown_features_and_mismatched_rows() -> None:
    x, s = _rows(1000)
    ref = build_reference(x, s)
    with pytest.raises(ValueError, match="unknown to this pipeline"):
        DriftMonitor(ref, PipelineMetrics(CollectorRegistry()), feature_names=("a", "b"))
    mon = DriftMonitor(ref, PipelineMetrics(CollectorRegistry()))
    with pytest.raises(ValueError, match="values for"):
        mon.observe(x, {"churn_risk": s["churn_risk"][:10], "purchase_propensity": s["purchase_propensity"]})


def _decode(sim_cfg: SimConfig) -> EventColumns:
    sim = simulate(sim_cfg)
    parts, off = [], 0
    for batch in iter_ndjson_batches(sim.events, 10_000):
        raw = RawBatch("sim", 0, np.arange(off, off + len(batch), dtype=np.int64), batch)
        parts.append(decode_batch(raw, now_ms=10**14).events)
        off += len(batch)
    return EventColumns.concat(parts)


def test_reference_from_events_bins_the_rows_the_stream_would_score_in_the_window() -> None:
    events = _decode(SimConfig(users=300, days=20, seed=3))
    since = int(events.ts_ms.max()) - 7 * 86_400_000
    window_rows = sum(len(r) for r in streamed_rows(events, batch_events=1000) if r.version >= since)
    seen: list[int] = []

    def score(x: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(x.shape[0])
        return {"churn_risk": np.full(x.shape[0], 0.3, np.float32), "purchase_propensity": x[:, 0] * 0}

    ref = reference_from_events(events, score, since_ms=since, batch_events=1000)
    assert ref.rows == window_rows == seen[0] > 0
    with pytest.raises(ValueError, match="history ends before"):
        reference_from_events(events, score, since_ms=int(events.ts_ms.max()) + 86_400_000, batch_events=1000)
