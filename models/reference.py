"""Reference distributions for drift monitoring, and the population stability index (PSI).

At training time the artifact stores, for each score head and each feature,
quantile bins of the population the model was trained to score (every user as
of the training ``--as-of`` date): the inner cut points of ``n_bins`` quantiles
(deduplicated, so a flag feature gets one cut, not nine) and the fraction of
users in each resulting bin ``(-inf, e1], (e1, e2], ..., (ek, inf)``. A drift
check later bins live values with the same cut points and compares fractions:

    PSI = sum_b (q_b - p_b) * ln(q_b / p_b)

with ``p`` the reference and ``q`` the live fractions, each floored at ``1e-4``.
Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FLOOR = 1e-4


def quantile_bins(values: npt.ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """``{"edges": inner cut points, "fractions": share per bin, "mean", "n"}`` of finite values."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.shape[0] == 0:
        return {"edges": [], "fractions": [1.0], "mean": float("nan"), "n": 0}
    edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1], method="inverted_cdf"))
    return {
        "edges": [float(e) for e in edges],
        "fractions": [float(f) for f in bin_fractions(v, edges)],
        "mean": float(v.mean()),
        "n": int(v.shape[0]),
    }


def bin_fractions(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Share of finite ``values`` in each bin ``(-inf, e1], ..., (ek, inf)``."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    e = np.asarray(edges, np.float64)
    counts = np.bincount(np.searchsorted(e, v, side="left"), minlength=e.shape[0] + 1).astype(np.float64)
    total = counts.sum()
    out: npt.NDArray[np.float64] = counts / total if total else counts
    return out


def psi(reference: dict[str, Any], values: npt.ArrayLike) -> float:
    """Population stability index of ``values`` against one stored reference (see the module docstring)."""
    p = np.maximum(np.asarray(reference["fractions"], np.float64), FLOOR)
    q = np.maximum(bin_fractions(values, reference["edges"]), FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def build_reference(
    scores: dict[str, npt.ArrayLike],
    features: dict[str, npt.ArrayLike],
    *,
    population: str,
    n_bins: int = 10,
    categories: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The ``reference`` block of ``artifact.json``: quantile bins per score and per feature.

    ``categories`` holds shares of categorical outputs (e.g. the stage mix) as given.
    """
    return {
        "population": population,
        "n_bins": n_bins,
        "psi_floor": FLOOR,
        "scores": {name: quantile_bins(v, n_bins) for name, v in scores.items()},
        "features": {name: quantile_bins(v, n_bins) for name, v in features.items()},
        "categories": categories or {},
    }
