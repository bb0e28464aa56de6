import numpy as np
import pytest

from models.report import BEATS_ON, ReportData, compute_metrics


def _data(primary_noise: float) -> ReportData:
    rng = np.random.default_rng(0)
    n = 8000
    truth = rng.random((n, 2))
    y = (rng.random((n, 2)) < truth).astype(np.float32)

    def noisy(s: float) -> np.ndarray:
        return np.clip(truth + rng.normal(0, s, (n, 2)), 0.001, 0.999)

    groups = np.array(["a", "b"], dtype=object)[rng.integers(0, 2, n)]
    return ReportData(
        heads=("churn_risk", "purchase_propensity"),
        labels=y,
        scores={"model": noisy(primary_noise), "rfm": noisy(0.2), "bgnbd": noisy(0.3)},
        scorer_titles={"model": "m", "rfm": "r", "bgnbd": "b"},
        groups=groups,
        group_order=("a", "b"),
        segments={"all": np.ones(n, bool), "a": groups == "a"},
        segment_titles={"all": "all", "a": "a"},
    )


def test_a_sharper_primary_beats_the_baselines_on_ranking_and_proper_scores() -> None:
    m = compute_metrics(_data(0.02))
    for seg in ("all", "a"):
        for head in ("churn_risk", "purchase_propensity"):
            assert m["primary_beats_baselines"][seg][head] == dict.fromkeys(BEATS_ON, True)
            assert m["primary_ece_within_limit"][seg][head]
    assert m["segments"]["a"]["churn_risk"]["model"]["n"] < m["segments"]["all"]["churn_risk"]["model"]["n"]


def test_a_noisier_primary_is_reported_as_losing() -> None:
    m = compute_metrics(_data(0.5))
    assert not any(m["primary_beats_baselines"]["all"]["churn_risk"].values())


def test_scores_must_match_the_labels() -> None:
    d = _data(0.1)
    with pytest.raises(ValueError, match="shape"):
        ReportData(**{**d.__dict__, "scores": {"model": d.labels[:10]}})
