import ast
import math
from pathlib import Path

import numpy as np
import pytest

import models
from models.reference import (
    bin_counts,
    bin_fractions,
    build_reference,
    population_stability_index,
    psi,
    quantile_bins,
    quantile_edges,
)


def test_quantile_bins_hold_a_tenth_each_and_dedupe_cut_points_of_flags() -> None:
    v = np.arange(1000, dtype=float)
    ref = quantile_bins(v)
    assert len(ref["edges"]) == 9
    np.testing.assert_allclose(ref["fractions"], 0.1, atol=0.002)
    flag = quantile_bins(np.r_[np.zeros(700), np.ones(300)])
    # deciles 0.1..0.7 interpolate to 0 (then 0.3 between the last 0 and the first 1), 0.8 and 0.9 to 1
    assert flag["edges"] == pytest.approx([0.0, 0.3, 1.0]) and flag["edges"] == sorted(set(flag["edges"]))
    assert sum(flag["fractions"]) == pytest.approx(1.0)
    assert flag["fractions"] == pytest.approx([0.0, 0.7, 0.0, 0.3])  # bins [e_i, e_i+1): 0 is in [0, 0.3)
    assert bin_fractions([0, 0, 1], flag["edges"]).tolist() == pytest.approx([0.0, 2 / 3, 0.0, 1 / 3])


def test_a_value_on_a_cut_point_falls_in_the_bin_above() -> None:
    assert bin_counts([0.5, 1.0, 1.5, 2.0, 3.0], [1.0, 2.0]).tolist() == [1.0, 2.0, 2.0]
    assert quantile_edges(np.arange(11.0), bins=2).tolist() == [5.0]  # np.quantile's default (linear) method
    assert quantile_edges(np.arange(4.0), bins=2).tolist() == [1.5]  # between observed values


def test_psi_is_zero_for_the_same_population_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 20_000)
    ref = quantile_bins(base)
    assert psi(ref, rng.normal(0, 1, 20_000)) < 0.01
    assert psi(ref, rng.normal(1.0, 1, 20_000)) > 0.25


def test_psi_of_a_stored_reference_is_the_psi_of_its_fractions_and_the_new_counts() -> None:
    rng = np.random.default_rng(1)
    ref = quantile_bins(rng.gamma(2.0, 3.0, 5000))
    new = rng.gamma(2.0, 3.5, 3000)
    assert psi(ref, new) == population_stability_index(ref["fractions"], bin_counts(new, ref["edges"]))


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


def test_reference_block_has_every_score_and_feature() -> None:
    block = build_reference({"churn_risk": [0.1, 0.9]}, {"f1": [1, 2], "f2": [3, 3]}, population="test")
    assert set(block["scores"]) == {"churn_risk"} and set(block["features"]) == {"f1", "f2"}
    assert block["population"] == "test" and block["n_bins"] == 10


def test_models_import_nothing_from_pipelines() -> None:
    for path in Path(models.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "pipelines" or n.startswith("pipelines.") for n in names), path
