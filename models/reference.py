"""Quantile bins and the population stability index (PSI): the one implementation of the drift maths.

Used for both drift references of a model artifact: the ``reference`` block of
``artifact.json`` (:func:`build_reference`, the batch population: every user as
of the training ``--as-of`` date) and the streaming monitor's
``drift_reference`` with the live gauges (``pipelines.monitoring.drift``, which
imports :func:`quantile_edges`, :func:`bin_counts` and
:func:`population_stability_index` from here). Pure numpy, no pipeline imports.

Bins: the inner cut points are the ``n_bins``-quantiles of the reference values
(``np.quantile``'s default linear interpolation, so a cut may lie between two
observed values), deduplicated (a flag feature gets a few cuts, not nine); the
edges ``e0 < e1 < ... < ek`` make the bins ``(-inf, e0), [e0, e1), ..., [ek, inf)``.
A drift check bins new values with the same edges and compares the shares:

    PSI = sum_b (q_b - p_b) * ln(q_b / p_b)

with ``p`` the reference and ``q`` the new shares, each floored at :data:`FLOOR`
(``1e-4``) so that an empty bin adds a large but finite term. Rules of thumb:
< 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift (the alert threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FLOOR = 1e-4  # floor of a bin share: an empty bin would make ln(q/p) infinite


def quantile_edges(values: npt.ArrayLike, bins: int = 10) -> npt.NDArray[np.float64]:
    """Interior bin edges at the ``bins``-quantiles of finite ``values`` (ties collapse, so fewer bins is possible)."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.shape[0] == 0:
        raise ValueError("no finite values to place bin edges on")
    return np.unique(np.quantile(v, np.arange(1, bins) / bins))


def bin_counts(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Counts of finite ``values`` in the ``len(edges) + 1`` bins ``(-inf, e0), [e0, e1), ..., [ek, inf)``."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    ed = np.asarray(edges, np.float64)
    idx = np.searchsorted(ed, v, side="right")
    return np.bincount(idx, minlength=ed.shape[0] + 1).astype(np.float64)


def bin_fractions(values: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Share of finite ``values`` in each bin of :func:`bin_counts` (all zero if there is none)."""
    counts = bin_counts(values, edges)
    total = counts.sum()
    out: npt.NDArray[np.float64] = counts / total if total else counts
    return out


def population_stability_index(
    expected_bins: npt.ArrayLike, actual_counts: npt.ArrayLike, *, eps: float = FLOOR
) -> float:
    """PSI of ``actual_counts`` against ``expected_bins`` (counts or shares; both are normalised).

    Bin shares are floored at ``eps`` so that a bin empty on one side adds a
    large but finite term instead of infinity.
    """
    e = np.asarray(expected_bins, np.float64)
    a = np.asarray(actual_counts, np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.shape[0] == 0:
        raise ValueError(f"expected and actual need the same non-empty 1-d shape, got {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or not (np.isfinite(e).all() and np.isfinite(a).all()):
        raise ValueError("bin counts must be finite and non-negative")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("bin counts sum to zero: nothing to compare")
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_bins(values: npt.ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """``{"edges": inner cut points, "fractions": share per bin, "mean", "n"}`` of finite values."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.shape[0] == 0:
        return {"edges": [], "fractions": [1.0], "mean": float("nan"), "n": 0}
    edges = quantile_edges(v, n_bins)
    return {
        "edges": [float(e) for e in edges],
        "fractions": [float(f) for f in bin_fractions(v, edges)],
        "mean": float(v.mean()),
        "n": int(v.shape[0]),
    }


def psi(reference: dict[str, Any], values: npt.ArrayLike) -> float:
    """Population stability index of ``values`` against one stored reference (see the module docstring)."""
    return population_stability_index(reference["fractions"], bin_counts(values, reference["edges"]))


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
