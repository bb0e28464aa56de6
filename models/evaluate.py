"""Evaluation math for binary scores: discrimination, calibration, lift. Pure numpy.

Every function takes ``y`` (0/1 labels) and ``p`` (scores; probabilities where
the metric needs them) as 1-d arrays of the same length. Ties in ``p`` are
handled exactly everywhere, which matters for rule baselines such as RFM that
put thousands of users on the same score:

* ROC-AUC is the Mann-Whitney statistic with average ranks (a tie counts 1/2).
* PR-AUC is average precision over the *distinct* thresholds (a tie block is
  one step, as in scikit-learn's ``average_precision_score``).
* Lift at k% is the expected positive rate of the top ``ceil(k * n)`` users
  when ties at the cut-off are broken at random, over the base rate.
* ECE (expected calibration error) uses ``n_bins`` equal-width bins on [0, 1]
  (right-closed except the first, which includes 0):
  ``sum_b (n_b / n) * |mean(y_b) - mean(p_b)|``. Empty bins contribute 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
EPS = 1e-7
DEFAULT_BINS = 10


def _check(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    ya = np.asarray(y, dtype=np.float64).ravel()
    pa = np.asarray(p, dtype=np.float64).ravel()
    if ya.shape != pa.shape:
        raise ValueError(f"labels and scores differ in length: {ya.shape[0]} vs {pa.shape[0]}")
    if ya.shape[0] == 0:
        raise ValueError("no rows to evaluate")
    if not np.isin(ya, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(pa).all():
        raise ValueError("scores must be finite")
    return ya, pa


def _rank_avg(p: FloatArray) -> FloatArray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    _, first, counts = np.unique(sp, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # average 1-based rank of each tie block
    ranks = np.empty_like(p)
    ranks[order] = np.repeat(avg, counts)
    return ranks


def roc_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Area under the ROC curve (probability a random positive outranks a random negative)."""
    ya, pa = _check(y, p)
    n_pos = ya.sum()
    n_neg = ya.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _rank_avg(pa)
    return float((r[ya == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _threshold_counts(y: FloatArray, p: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Cumulative (tp, fp) at each distinct threshold, highest first, and the thresholds."""
    order = np.argsort(-p, kind="mergesort")
    sp, sy = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(sp) != 0), sp.shape[0] - 1]  # end of each tie block
    tp = np.cumsum(sy)[last]
    fp = (last + 1) - tp
    return tp, fp, sp[last]


def roc_curve(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(false positive rate, true positive rate) from (0, 0) to (1, 1)."""
    ya, pa = _check(y, p)
    tp, fp, _ = _threshold_counts(ya, pa)
    n_pos, n_neg = max(ya.sum(), 1.0), max(ya.shape[0] - ya.sum(), 1.0)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def pr_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision."""
    ya, pa = _check(y, p)
    n_pos = ya.sum()
    if n_pos == 0:
        return math.nan
    tp, fp, _ = _threshold_counts(ya, pa)
    recall = tp / n_pos
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_curve(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(recall, precision) at each distinct threshold, highest threshold first."""
    ya, pa = _check(y, p)
    tp, fp, _ = _threshold_counts(ya, pa)
    return tp / max(ya.sum(), 1.0), tp / (tp + fp)


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [1e-7, 1 - 1e-7]."""
    ya, pa = _check(y, p)
    q = np.clip(pa, EPS, 1 - EPS)
    return float(-np.mean(ya * np.log(q) + (1 - ya) * np.log(1 - q)))


def brier(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean squared error of the probabilities."""
    ya, pa = _check(y, p)
    return float(np.mean((pa - ya) ** 2))


def _bin_index(p: FloatArray, n_bins: int) -> npt.NDArray[np.int64]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1).astype(np.int64)


def calibration_table(
    y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = DEFAULT_BINS
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per equal-width bin: (mean predicted, observed rate, count); NaN means for empty bins."""
    ya, pa = _check(y, p)
    if not ((pa >= 0) & (pa <= 1)).all():
        raise ValueError("calibration needs probabilities in [0, 1]")
    b = _bin_index(pa, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(b, weights=pa, minlength=n_bins) / count
        rate = np.bincount(b, weights=ya, minlength=n_bins) / count
    return mean_p, rate, count


def ece(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins (see the module docstring)."""
    mean_p, rate, count = calibration_table(y, p, n_bins)
    ok = count > 0
    return float(np.sum(count[ok] * np.abs(rate[ok] - mean_p[ok])) / count.sum())


def lift_at(y: npt.ArrayLike, p: npt.ArrayLike, fraction: float = 0.1) -> float:
    """Positive rate among the top ``ceil(fraction * n)`` scores over the base rate (ties shared)."""
    ya, pa = _check(y, p)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    base = ya.mean()
    if base == 0:
        return math.nan
    return _top_rate(ya, pa, math.ceil(fraction * ya.shape[0])) / base


def _top_rate(y: FloatArray, p: FloatArray, k: int) -> float:
    """Expected positive rate of the k highest scores, ties at the cut-off broken at random."""
    thr = np.sort(p)[::-1][k - 1]
    above = p > thr
    tie = p == thr
    n_above = int(above.sum())
    pos = y[above].sum() + (k - n_above) * y[tie].mean()
    return float(pos / k)


def lift_curve(y: npt.ArrayLike, p: npt.ArrayLike, points: int = 20) -> tuple[FloatArray, FloatArray]:
    """(fraction targeted, lift) at ``points`` evenly spaced fractions (5 %, 10 %, ... 100 %)."""
    ya, pa = _check(y, p)
    base = ya.mean()
    fr = np.arange(1, points + 1) / points
    if base == 0:
        return fr, np.full(points, np.nan)
    n = ya.shape[0]
    return fr, np.array([_top_rate(ya, pa, max(1, math.ceil(f * n))) / base for f in fr])


@dataclass(frozen=True, slots=True)
class HeadMetrics:
    """The standard metric set of one head and one scorer."""

    n: int
    positive_rate: float
    mean_score: float
    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    ece: float
    lift_at_10: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


def head_metrics(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = DEFAULT_BINS) -> HeadMetrics:
    """ROC-AUC, PR-AUC, log-loss, Brier, ECE and lift at 10 % of one head's probabilities."""
    ya, pa = _check(y, p)
    return HeadMetrics(
        n=int(ya.shape[0]),
        positive_rate=float(ya.mean()),
        mean_score=float(pa.mean()),
        roc_auc=roc_auc(ya, pa),
        pr_auc=pr_auc(ya, pa),
        log_loss=log_loss(ya, pa),
        brier=brier(ya, pa),
        ece=ece(ya, pa, n_bins),
        lift_at_10=lift_at(ya, pa, 0.1),
    )
