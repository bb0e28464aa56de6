"""PSI, drift references and the drift monitor (pure logic, a fresh registry per test)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from pipelines.contract.events import EventColumns, RawBatch, decode_batch
from pipelines.core.features import FEATURE_NAMES
from pipelines.monitoring.drift import (
    DRIFT_FEATURES,
    SCORE_NAMES,
    DriftMonitor,
    DriftReference,
    bin_counts,
    build_reference,
    population_stability_index,
    quantile_edges,
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


def test_psi_is_zero_for_identical_distributions_and_grows_with_the_shift() -> None:
    e = [10, 20, 30, 40]
    assert population_stability_index(e, e) == 0.0
    assert population_stability_index(e, [20, 40, 60, 80]) == pytest.approx(0.0)  # counts vs shares
    small = population_stability_index(e, [12, 20, 29, 39])
    large = population_stability_index(e, [40, 30, 20, 10])
    assert 0 < small < 0.1 < 0.25 < large


def test_psi_matches_the_textbook_formula() -> None:
    e, a = np.array([0.25, 0.25, 0.5]), np.array([0.2, 0.3, 0.5])
    expected = float(np.sum((a - e) * np.log(a / e)))
    assert population_stability_index(e, a) == pytest.approx(expected)


def test_psi_of_an_empty_bin_is_large_but_finite() -> None:
    psi = population_stability_index([50, 50, 0], [40, 40, 20])
    assert math.isfinite(psi) and psi > 1.0


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [([1, 2], [1, 2, 3], "same non-empty"), ([1, -1], [1, 1], "non-negative"), ([1, 1], [0, 0], "sum to zero")],
)
def test_psi_rejects_bad_input(expected: list[int], actual: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        population_stability_index(expected, actual)


def test_bins_cover_the_real_line_and_ties_collapse_edges() -> None:
    edges = quantile_edges(np.array([0, 0, 0, 0, 0, 0, 0, 1, 2, 3], float), bins=10)
    assert edges.tolist() == sorted(set(edges.tolist()))
    counts = bin_counts([-5.0, 0.0, 0.5, 3.0, 99.0, np.nan, np.inf], edges)
    assert counts.sum() == 5 and counts.shape[0] == edges.shape[0] + 1  # non-finite values dropped


def test_reference_round_trips_through_artifact_json() -> None:
    x, s = _rows(5000)
    ref = build_reference(x, s)
    assert [c.name for c in ref.columns] == [*SCORE_NAMES, *DRIFT_FEATURES]
    assert all(math.isclose(sum(c.expected), 1.0) for c in ref.columns)
    meta = json.loads(json.dumps({"model_version": "m", **{"drift_reference": ref.to_meta()}}))
    assert DriftReference.from_meta(meta) == ref
    assert DriftReference.from_meta({"model_version": "m"}) is None


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
