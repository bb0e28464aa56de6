import numpy as np
import pytest

from models.reference import bin_fractions, build_reference, psi, quantile_bins


def test_quantile_bins_hold_a_tenth_each_and_dedupe_cut_points_of_flags() -> None:
    v = np.arange(1000, dtype=float)
    ref = quantile_bins(v)
    assert len(ref["edges"]) == 9
    np.testing.assert_allclose(ref["fractions"], 0.1, atol=0.002)
    flag = quantile_bins(np.r_[np.zeros(700), np.ones(300)])
    assert flag["edges"] == [0.0, 1.0] or flag["edges"] == [0.0]
    assert sum(flag["fractions"]) == pytest.approx(1.0)
    assert bin_fractions([0, 0, 1], flag["edges"])[0] == pytest.approx(2 / 3)


def test_psi_is_zero_for_the_same_population_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 20_000)
    ref = quantile_bins(base)
    assert psi(ref, rng.normal(0, 1, 20_000)) < 0.01
    assert psi(ref, rng.normal(1.0, 1, 20_000)) > 0.25


def test_reference_block_has_every_score_and_feature() -> None:
    block = build_reference({"churn_risk": [0.1, 0.9]}, {"f1": [1, 2], "f2": [3, 3]}, population="test")
    assert set(block["scores"]) == {"churn_risk"} and set(block["features"]) == {"f1", "f2"}
    assert block["population"] == "test" and block["n_bins"] == 10
