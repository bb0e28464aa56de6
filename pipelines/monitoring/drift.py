"""Drift of scores and key features against the model's training reference (PSI).

The population stability index compares the distribution of a column in recent
traffic with the distribution the model was trained on, over fixed bins::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)     (e, a: expected and actual bin shares)

Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift (the
alert threshold in ``infra/prometheus/rules``). The binning and PSI maths are
:mod:`models.reference`'s, shared with the artifact's batch ``reference`` block.

* :class:`DriftReference` - bin edges (deciles of the training values) and the
  expected share per bin for each score and each of :data:`DRIFT_FEATURES`. It
  lives in the model artifact's ``artifact.json`` under ``drift_reference``
  (:meth:`DriftReference.to_meta` / :meth:`DriftReference.from_meta`).
* :func:`reference_from_events` - builds it the way the stream sees rows: the
  history is replayed through :class:`~pipelines.core.shard.ShardProcessor` (the
  streaming code), and the rows it would score in the reference window are
  binned. The streamed population (users who just acted, plus users whose
  silence timer fired) is not the population of a training origin (every user
  known), so a reference from the training matrix would show permanent "drift".
* :class:`DriftMonitor` - accumulates the scored rows of the stream in the same
  bins, exponentially decayed (half-life in rows), and sets the gauges
  ``lifecycle_drift_psi{kind, name}`` and ``lifecycle_drift_window_rows``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models.reference import bin_counts, population_stability_index, quantile_edges
from pipelines.core.features import FEATURE_NAMES
from pipelines.monitoring.metrics import PipelineMetrics

#: Scores watched for drift (columns of ``user_scores``).
SCORE_NAMES: tuple[str, ...] = ("churn_risk", "purchase_propensity")
#: Key features watched for drift: recency, activity, depth, value, coupons, tenure.
DRIFT_FEATURES: tuple[str, ...] = (
    "days_since_active",
    "activity_30d",
    "active_days_30",
    "order_value_90d",
    "lifetime_orders",
    "coupon_redeem_rate",
    "tenure_days",
)
META_KEY = "drift_reference"

Kind = Literal["score", "feature"]


@dataclass(frozen=True, slots=True)
class DriftColumn:
    """Reference bins of one score or feature."""

    kind: Kind
    name: str
    edges: tuple[float, ...]
    expected: tuple[float, ...]  # share per bin, len(edges) + 1

    def __post_init__(self) -> None:
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(f"{self.name}: {len(self.expected)} shares for {len(self.edges)} edges")


@dataclass(frozen=True, slots=True)
class DriftReference:
    """The training-time distribution of every watched column."""

    columns: tuple[DriftColumn, ...]
    rows: int

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready form for ``artifact.json`` (key :data:`META_KEY`)."""
        return {
            "rows": self.rows,
            "columns": [
                {"kind": c.kind, "name": c.name, "edges": list(c.edges), "expected": list(c.expected)}
                for c in self.columns
            ],
        }

    @staticmethod
    def from_meta(meta: Mapping[str, Any]) -> DriftReference | None:
        """The reference stored in an artifact's metadata, or None if the artifact has none."""
        ref = meta.get(META_KEY)
        if not ref:
            return None
        cols = tuple(
            DriftColumn(
                kind=c["kind"],
                name=str(c["name"]),
                edges=tuple(float(x) for x in c["edges"]),
                expected=tuple(float(x) for x in c["expected"]),
            )
            for c in ref["columns"]
        )
        return DriftReference(cols, int(ref["rows"]))


def build_reference(
    features: npt.NDArray[np.float32],
    scores: Mapping[str, npt.ArrayLike],
    *,
    feature_names: tuple[str, ...] = FEATURE_NAMES,
    drift_features: tuple[str, ...] = DRIFT_FEATURES,
    bins: int = 10,
) -> DriftReference:
    """Decile bins and shares of each score and each drift feature over the given rows."""
    cols: list[DriftColumn] = []

    def add(kind: Kind, name: str, values: npt.ArrayLike) -> None:
        edges = quantile_edges(values, bins)
        counts = bin_counts(values, edges)
        cols.append(DriftColumn(kind, name, tuple(edges.tolist()), tuple((counts / counts.sum()).tolist())))

    for name in SCORE_NAMES:
        add("score", name, scores[name])
    for name in drift_features:
        add("feature", name, features[:, feature_names.index(name)])
    return DriftReference(tuple(cols), int(features.shape[0]))








class DriftMonitor:
    """PSI of the stream's scored rows against a :class:`DriftReference`, exported as gauges.

    Call :meth:`observe` with every scored micro-batch (features and the scores of
    the same rows). Counts decay by half every ``half_life_rows`` rows, so the PSI
    describes recent traffic; gauges are set once ``min_rows`` (effective) rows
    were seen, before that a PSI would be noise. Not thread-safe: one per worker.
    """

    def __init__(
        self,
        reference: DriftReference,
        metrics: PipelineMetrics,
        *,
        feature_names: tuple[str, ...] = FEATURE_NAMES,
        half_life_rows: float = 250_000,
        min_rows: float = 1_000,
    ) -> None:
        if half_life_rows <= 0:
            raise ValueError(f"half_life_rows must be positive, got {half_life_rows}")
        self.reference = reference
        self.metrics = metrics
        self.half_life_rows = half_life_rows
        self.min_rows = min_rows
        self.rows = 0.0
        self._edges = [np.asarray(c.edges, np.float64) for c in reference.columns]
        self._counts = [np.zeros(len(c.expected), np.float64) for c in reference.columns]
        self._feature_index: list[int | None] = []
        for c in reference.columns:
            if c.kind == "feature":
                if c.name not in feature_names:
                    raise ValueError(f"drift reference names feature {c.name!r}, unknown to this pipeline")
                self._feature_index.append(feature_names.index(c.name))
            else:
                self._feature_index.append(None)

    def observe(self, features: npt.NDArray[np.float32], scores: Mapping[str, npt.ArrayLike]) -> None:
        """Add one scored batch (``features``: n x F; ``scores``: name -> n values) and update the gauges."""
        n = features.shape[0]
        if n == 0:
            return
        decay = 0.5 ** (n / self.half_life_rows)
        for col, edges, counts, fi in zip(
            self.reference.columns, self._edges, self._counts, self._feature_index, strict=True
        ):
            values = features[:, fi] if fi is not None else np.asarray(scores[col.name])
            if values.shape[0] != n:
                raise ValueError(f"{col.name}: {values.shape[0]} values for {n} rows")
            counts *= decay
            counts += bin_counts(values, edges)
        self.rows = self.rows * decay + n
        self._publish()

    def psi(self) -> dict[tuple[str, str], float]:
        """Current PSI per ``(kind, name)``; empty until ``min_rows`` were seen."""
        if self.rows < self.min_rows:
            return {}
        return {
            (c.kind, c.name): population_stability_index(c.expected, counts)
            for c, counts in zip(self.reference.columns, self._counts, strict=True)
            if counts.sum() > 0
        }

    def _publish(self) -> None:
        m = self.metrics
        m.drift_rows.set(self.rows)
        for (kind, name), value in self.psi().items():
            m.drift_psi.labels(kind=kind, name=name).set(value)
