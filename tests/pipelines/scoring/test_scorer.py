"""The scoring engine on the CPU: same scores and reasons as the reference maths, OOM split, device fallback, NaN/inf.

CUDA is exercised in ``test_scoring_cuda.py`` (skipped without a GPU); here a failing or
out-of-memory device is an injected :class:`~pipelines.scoring.fused.Engine`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models.artifact import Artifact, load_artifact
from models.network import input_x_gradient
from pipelines.contract.decode import decode_batch
from pipelines.contract.events import EventColumns, RawBatch
from pipelines.core.features import FEATURE_NAMES, REGISTRY, compute_features, schema_hash
from pipelines.core.scores import Scores
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.offline.history import sort_by_time, state_as_of
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches
from pipelines.scoring import cpu
from pipelines.scoring.cpu import CpuEngine
from pipelines.scoring.fused import FusedWeights, RawScores
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer


@pytest.fixture(scope="module")
def artifact() -> Artifact:
    return load_artifact(DEFAULT_MODEL_DIR, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return simulated_features()


def simulated_features(users: int = 1500) -> np.ndarray:
    """Feature rows of simulated users at the end of their history (the distribution the model sees)."""
    sim = simulate(SimConfig(users=users, days=30))
    batches = iter_ndjson_batches(sim.events, 100_000)
    parts = [decode_batch(RawBatch("sim", 0, np.arange(len(b)), b), now_ms=4_000_000_000_000).events for b in batches]
    ev = sort_by_time(EventColumns.concat(parts))
    end = int(ev.ts_ms[-1])
    st = state_as_of(ev, end)
    return compute_features(st, np.arange(st.n, dtype=np.int64), end)


def reference_scores(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, list[list[str]]]:
    """The plain definition: models.network.input_x_gradient, torch.topk, one phrase at a time."""
    probs, attr = input_x_gradient(model, torch.from_numpy(x))  # type: ignore[arg-type]
    top_attr, top = torch.topk(attr, 3, dim=1)
    mean = model.mean.numpy().astype(np.float64)  # type: ignore[operator]
    mean_raw = np.where(model.log_mask.numpy(), np.expm1(mean), mean)  # type: ignore[operator]
    reasons = []
    for r in range(x.shape[0]):
        row = []
        for j in range(3):
            if top_attr[r, j] <= 0:
                break
            f = int(top[r, j])
            v = float(x[r, f])
            spec = REGISTRY[f]
            cents = min(max(round(v * 100), 0), (1 << 40) - 1)
            threshold = mean_raw[f] if spec.neutral is None else spec.neutral
            row.append((spec.high if v >= threshold else spec.low).format(v=cents / 100))
        reasons.append(row)
    return probs.numpy(), reasons


def _cpu(artifact: Artifact, **kw: object) -> Scorer:
    return Scorer(artifact, device=torch.device("cpu"), **kw)  # type: ignore[arg-type]


def test_scores_and_reasons_equal_the_reference_implementation(artifact: Artifact, features: np.ndarray) -> None:
    scorer = _cpu(artifact)
    got = scorer.score(features)
    probs, reasons = reference_scores(scorer.model, features)
    np.testing.assert_allclose(got.churn_risk, probs[:, 0], atol=1e-5)
    np.testing.assert_allclose(got.purchase_propensity, probs[:, 1], atol=1e-5)
    assert got.reasons.to_pylist() == reasons
    assert sum(1 for r in reasons if r) > 0.5 * len(reasons)  # the comparison is not vacuous


def test_micro_batch_size_does_not_change_scores_or_reasons(artifact: Artifact, features: np.ndarray) -> None:
    whole = _cpu(artifact, max_batch_rows=4096).score(features)
    small = _cpu(artifact, max_batch_rows=7).score(features)
    np.testing.assert_allclose(small.churn_risk, whole.churn_risk, atol=1e-6)
    np.testing.assert_allclose(small.purchase_propensity, whole.purchase_propensity, atol=1e-6)
    assert small.reasons.to_pylist() == whole.reasons.to_pylist()


def test_probabilities_alone_equal_those_of_a_full_score(artifact: Artifact, features: np.ndarray) -> None:
    scorer = _cpu(artifact)
    churn, prop = scorer.score_probs(features)
    full = scorer.score(features)
    np.testing.assert_allclose(churn, full.churn_risk, atol=1e-6)
    np.testing.assert_allclose(prop, full.purchase_propensity, atol=1e-6)


def test_empty_input_gives_empty_scores(artifact: Artifact) -> None:
    s = _cpu(artifact).score(np.zeros((0, len(FEATURE_NAMES)), np.float32))
    assert len(s) == 0 and len(s.reasons) == 0


def test_nonfinite_rows_are_zeroed_counted_and_never_reach_the_model(
    artifact: Artifact, features: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = features[:50].copy()
    x[3, 5] = np.nan
    x[7, 0] = np.inf
    x[7, 9] = -np.inf
    x[20, 70] = np.nan
    seen: list[torch.Tensor] = []
    real = cpu.fused_forward

    def spy(w: FusedWeights, t: torch.Tensor, **kw: bool) -> tuple:
        seen.append(t.clone())
        return real(w, t, **kw)

    monkeypatch.setattr(cpu, "fused_forward", spy)
    reg = CollectorRegistry()
    scorer = _cpu(artifact, metrics=PipelineMetrics(reg))
    got = scorer.score(x)
    assert seen and all(bool(torch.isfinite(t).all()) for t in seen)
    assert reg.get_sample_value("lifecycle_nonfinite_feature_rows_total") == 3
    clean = np.where(np.isfinite(x), x, 0.0).astype(np.float32)
    want = _cpu(artifact).score(clean)
    np.testing.assert_allclose(got.churn_risk, want.churn_risk, atol=1e-6)
    assert got.reasons.to_pylist() == want.reasons.to_pylist()
    assert np.isfinite(got.churn_risk).all()


def test_metrics_count_rows_batches_latency_and_queue_delay(artifact: Artifact, features: np.ndarray) -> None:
    reg = CollectorRegistry()
    scorer = _cpu(artifact, max_batch_rows=500, metrics=PipelineMetrics(reg))
    scorer.score(features)
    n = features.shape[0]
    batches = -(-n // 500)
    assert reg.get_sample_value("lifecycle_rows_scored_total") == n
    assert reg.get_sample_value("lifecycle_scoring_batch_rows_count") == batches
    assert reg.get_sample_value("lifecycle_scoring_batch_rows_sum") == n
    assert reg.get_sample_value("lifecycle_scoring_seconds_count") == batches
    assert reg.get_sample_value("lifecycle_scoring_queue_delay_seconds_count") == batches
    assert reg.get_sample_value("lifecycle_scoring_device", {"device": "cpu"}) == 1
    assert reg.get_sample_value("lifecycle_scoring_device", {"device": "cuda"}) == 0


# --------------------------------------------------------------------------- faults


class FlakyEngine:
    """A device that runs out of memory for batches above ``limit`` rows (else scores on the CPU)."""

    def __init__(self, model: torch.nn.Module, limit: int, error: Exception, device: str = "cuda") -> None:
        self.device = torch.device(device)
        self.inner = CpuEngine(model)  # type: ignore[arg-type]
        self.limit = limit
        self.error = error
        self.sizes: list[int] = []

    def run(
        self, x: np.ndarray, bounds: Sequence[tuple[int, int]], *, reasons: bool
    ) -> Iterator[tuple[int, int, RawScores]]:
        for a, b in bounds:
            if b - a > self.limit:
                raise self.error
            self.sizes.append(b - a)
            yield from self.inner.run(x, [(a, b)], reasons=reasons)


class BrokenEngine:
    """A device that fails every call (driver error, lost GPU)."""

    device = torch.device("cuda")

    def __init__(self) -> None:
        self.calls = 0

    def run(
        self, x: np.ndarray, bounds: Sequence[tuple[int, int]], *, reasons: bool
    ) -> Iterator[tuple[int, int, RawScores]]:
        self.calls += 1
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
        yield  # pragma: no cover - a generator, as engines are


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
    ids=["OutOfMemoryError", "RuntimeError-out-of-memory"],
)
def test_out_of_memory_splits_the_batch_in_halves_and_retries(
    artifact: Artifact, features: np.ndarray, error: Exception
) -> None:
    reg = CollectorRegistry()
    eng = FlakyEngine(artifact.model, limit=300, error=error)
    scorer = _cpu(artifact, max_batch_rows=1000, metrics=PipelineMetrics(reg), engine=eng)
    got = scorer.score(features)
    want = _cpu(artifact).score(features)
    np.testing.assert_allclose(got.churn_risk, want.churn_risk, atol=1e-6)
    assert got.reasons.to_pylist() == want.reasons.to_pylist()
    assert max(eng.sizes) == 250 and sum(eng.sizes) == features.shape[0]  # 1000 -> 500 -> 250
    assert reg.get_sample_value("lifecycle_scoring_oom_splits_total") == 2
    assert scorer.device.type == "cuda"  # out of memory is not a broken device
    eng.sizes.clear()
    scorer.score(features[:600])  # the halved size is kept: no new failure
    assert max(eng.sizes) == 250 and reg.get_sample_value("lifecycle_scoring_oom_splits_total") == 2


def test_out_of_memory_for_a_single_row_is_raised(artifact: Artifact, features: np.ndarray) -> None:
    eng = FlakyEngine(artifact.model, limit=0, error=torch.cuda.OutOfMemoryError("CUDA out of memory"))
    scorer = _cpu(artifact, max_batch_rows=8, engine=eng)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        scorer.score(features[:3])


def test_a_device_failing_at_a_call_falls_back_to_cpu_with_one_log_line_and_the_gauge(
    artifact: Artifact, features: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    reg = CollectorRegistry()
    broken = BrokenEngine()
    scorer = Scorer(artifact, device=torch.device("cuda"), metrics=PipelineMetrics(reg), engine=broken)
    assert reg.get_sample_value("lifecycle_scoring_device", {"device": "cuda"}) == 1
    with caplog.at_level(logging.WARNING, logger="pipelines.scoring.scorer"):
        got = scorer.score(features)
        again = scorer.score(features[:10])
    want = _cpu(artifact).score(features)
    np.testing.assert_allclose(got.churn_risk, want.churn_risk, atol=1e-6)
    assert got.reasons.to_pylist() == want.reasons.to_pylist()
    assert len(again) == 10 and broken.calls == 1
    assert scorer.device.type == "cpu"
    assert reg.get_sample_value("lifecycle_scoring_device", {"device": "cpu"}) == 1
    assert reg.get_sample_value("lifecycle_scoring_device", {"device": "cuda"}) == 0
    assert reg.get_sample_value("lifecycle_scoring_fallbacks_total") == 1
    lines = [r for r in caplog.records if "CPU" in r.getMessage()]
    assert len(lines) == 1 and "illegal memory access" in lines[0].getMessage()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA cannot start (this one has a GPU)")
def test_an_unusable_device_at_load_falls_back_to_cpu(
    artifact: Artifact, features: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    reg = CollectorRegistry()
    with caplog.at_level(logging.WARNING, logger="pipelines.scoring.scorer"):
        scorer = Scorer(artifact, device=torch.device("cuda"), metrics=PipelineMetrics(reg))
    assert scorer.device.type == "cpu"
    assert reg.get_sample_value("lifecycle_scoring_device", {"device": "cpu"}) == 1
    assert reg.get_sample_value("lifecycle_scoring_device", {"device": "cuda"}) == 0
    assert reg.get_sample_value("lifecycle_scoring_fallbacks_total") == 1
    assert len([r for r in caplog.records if "at load" in r.getMessage()]) == 1
    np.testing.assert_allclose(scorer.score(features).churn_risk, _cpu(artifact).score(features).churn_risk, atol=1e-6)


def test_from_dir_with_an_absent_gpu_scores_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: from_dir would use it")
    scorer = Scorer.from_dir(DEFAULT_MODEL_DIR, device="cuda")
    assert scorer.device.type == "cpu"


def test_a_network_the_fused_path_does_not_recognise_is_scored_by_the_reference(
    artifact: Artifact, features: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disagree(*a: object, **k: object) -> float:
        raise ValueError("fused scoring disagrees with the reference")

    monkeypatch.setattr(cpu, "check_against_reference", disagree)
    scorer = _cpu(artifact)
    assert isinstance(scorer._engine, CpuEngine) and scorer._engine.weights is None  # noqa: SLF001
    probs, reasons = reference_scores(scorer.model, features[:200])
    got = scorer.score(features[:200])
    np.testing.assert_allclose(got.churn_risk, probs[:, 0], atol=1e-6)
    assert got.reasons.to_pylist() == reasons


def test_the_batcher_front_end_returns_each_request_its_own_scores(artifact: Artifact, features: np.ndarray) -> None:
    scorer = _cpu(artifact, max_batch_rows=256)
    want = scorer.score(features)
    parts = np.array_split(np.arange(features.shape[0]), 9)
    with scorer.batcher() as b:
        futures = [b.submit(features[p]) for p in parts]
        got: list[Scores] = [f.result(timeout=30) for f in futures]
    for p, s in zip(parts, got, strict=True):
        np.testing.assert_allclose(s.churn_risk, want.churn_risk[p], atol=1e-6)
        assert s.reasons.to_pylist() == want.reasons.take(p).to_pylist()


def test_trend_reasons_are_worded_against_one_not_the_training_mean() -> None:
    from pipelines.core.features import INDEX
    from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer

    scorer = Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")
    thresholds = scorer._raw_means()
    assert thresholds[INDEX["trend_activity"]] == 1.0 and thresholds[INDEX["trend_orders"]] == 1.0
