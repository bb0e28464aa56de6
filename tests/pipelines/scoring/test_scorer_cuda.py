"""The CUDA scoring path against the CPU path (skipped, with the reason shown, on machines without a GPU).

Tolerances (docs/scoring.md): fp32 on the GPU agrees with the CPU to 1e-4 in probability and in
>= 99.5 % of the rows' reason lists (the rest are near-ties of attributions); bf16 to 2e-2 in
probability (4.6e-3 measured with bf16 on the CPU as a proxy).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models.artifact import Artifact, load_artifact
from pipelines.core.features import FEATURE_NAMES, schema_hash
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.scoring.cuda import CudaEngine
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device (torch.cuda.is_available() is False): GPU scoring tests need a GPU",
)


@pytest.fixture(scope="module")
def artifact() -> Artifact:
    return load_artifact(DEFAULT_MODEL_DIR, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """Simulated users' features; on a GPU host without the simulator's dependencies (polars, bytewax):
    a saved matrix (LIFECYCLE_TEST_FEATURES=FILE.npy, from ``python -m bench.scoring --save-features``).
    """
    path = os.environ.get("LIFECYCLE_TEST_FEATURES")
    if path:
        return np.load(path).astype(np.float32)[:20_000]
    from tests.pipelines.scoring.test_scorer import simulated_features

    return simulated_features()


def _same_reasons(a: list[list[str]], b: list[list[str]]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / max(len(a), 1)


def _cuda(artifact: Artifact, **kw: object) -> Scorer:
    s = Scorer(artifact, device=torch.device("cuda"), **kw)  # type: ignore[arg-type]
    assert s.device.type == "cuda", "the scorer fell back to the CPU: see the warning in the log"
    return s


def test_cuda_fp32_agrees_with_cpu(artifact: Artifact, features: np.ndarray) -> None:
    cpu = Scorer(artifact, device=torch.device("cpu")).score(features)
    gpu = _cuda(artifact, precision="fp32").score(features)
    np.testing.assert_allclose(gpu.churn_risk, cpu.churn_risk, atol=1e-4)
    np.testing.assert_allclose(gpu.purchase_propensity, cpu.purchase_propensity, atol=1e-4)
    assert _same_reasons(gpu.reasons.to_pylist(), cpu.reasons.to_pylist()) >= 0.995


def test_cuda_auto_precision_probabilities_in_bf16_reasons_in_fp32(artifact: Artifact, features: np.ndarray) -> None:
    cpu = Scorer(artifact, device=torch.device("cpu"))
    gpu = _cuda(artifact, precision="auto")
    churn, prop = gpu.score_probs(features)
    ref_churn, ref_prop = cpu.score_probs(features)
    assert float(np.abs(churn - ref_churn).max()) <= 2e-2
    assert float(np.abs(prop - ref_prop).max()) <= 2e-2
    full, ref = gpu.score(features), cpu.score(features)
    np.testing.assert_allclose(full.churn_risk, ref.churn_risk, atol=1e-4)
    assert _same_reasons(full.reasons.to_pylist(), ref.reasons.to_pylist()) >= 0.995


def test_cuda_bf16_everywhere_stays_within_its_tolerance(artifact: Artifact, features: np.ndarray) -> None:
    cpu = Scorer(artifact, device=torch.device("cpu")).score(features)
    gpu = _cuda(artifact, precision="bf16").score(features)
    assert float(np.abs(gpu.churn_risk - cpu.churn_risk).max()) <= 2e-2
    assert _same_reasons(gpu.reasons.to_pylist(), cpu.reasons.to_pylist()) >= 0.9


@pytest.mark.parametrize("n", [1, 1023, 1025, 4096, 9000])
def test_cuda_batches_padded_to_their_bucket_score_like_the_cpu(
    artifact: Artifact,
    features: np.ndarray,
    n: int,
) -> None:
    x = np.resize(features, (n, features.shape[1])).astype(np.float32)
    cpu = Scorer(artifact, device=torch.device("cpu")).score(x)
    gpu = _cuda(artifact, precision="fp32", max_batch_rows=4096).score(x)
    assert len(gpu) == n
    np.testing.assert_allclose(gpu.churn_risk, cpu.churn_risk, atol=1e-4)


def test_cuda_graphs_are_captured_and_equal_eager_execution(artifact: Artifact, features: np.ndarray) -> None:
    graphs = _cuda(artifact, precision="fp32", max_batch_rows=2048)
    eager = _cuda(artifact, precision="fp32", max_batch_rows=2048, cuda_graphs=False)
    a, b = graphs.score(features), eager.score(features)
    engine = graphs._engine  # noqa: SLF001
    assert isinstance(engine, CudaEngine)
    assert any(g.graph is not None for g in engine._graphs.values()), "no CUDA graph was captured"  # noqa: SLF001
    np.testing.assert_allclose(a.churn_risk, b.churn_risk, atol=1e-6)
    assert a.reasons.to_pylist() == b.reasons.to_pylist()


def test_cuda_counts_nonfinite_rows_on_the_device(artifact: Artifact, features: np.ndarray) -> None:
    x = features[:100].copy()
    x[4, 2] = np.nan
    x[50, 60] = np.inf
    reg = CollectorRegistry()
    gpu = _cuda(artifact, precision="fp32", metrics=PipelineMetrics(reg)).score(x)
    assert reg.get_sample_value("lifecycle_nonfinite_feature_rows_total") == 2
    assert np.isfinite(gpu.churn_risk).all()
    cpu = Scorer(artifact, device=torch.device("cpu")).score(np.where(np.isfinite(x), x, 0).astype(np.float32))
    np.testing.assert_allclose(gpu.churn_risk, cpu.churn_risk, atol=1e-4)


def test_cuda_batcher_overlaps_submitters_and_returns_in_order(artifact: Artifact, features: np.ndarray) -> None:
    gpu = _cuda(artifact, precision="fp32")
    want = gpu.score(features)
    parts = np.array_split(np.arange(features.shape[0]), 7)
    with gpu.batcher() as b:
        futures = [b.submit(features[p]) for p in parts]
        for p, f in zip(parts, futures, strict=True):
            np.testing.assert_allclose(f.result(timeout=60).churn_risk, want.churn_risk[p], atol=1e-6)
