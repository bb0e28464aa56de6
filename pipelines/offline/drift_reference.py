"""The streaming drift reference, built the way the stream sees rows.

The history is replayed through :class:`~pipelines.core.shard.ShardProcessor` (the streaming code), and
the rows it would score in the reference window are binned (:func:`pipelines.monitoring.drift.build_reference`).
The streamed population (users who just acted, plus users whose silence timer fired) is not the population
of a training origin (every user known), so a reference from the training matrix would show permanent
"drift". ``lifecycle train`` stores it in the artifact; :class:`~pipelines.monitoring.drift.DriftMonitor`
compares live rows with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import numpy.typing as npt

from pipelines.contract.events import EventColumns
from pipelines.core.evaluated import FeatureRows
from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.monitoring.drift import DriftReference, build_reference
from pipelines.scoring.scorer import Scorer

ScoreFn = Callable[[npt.NDArray[np.float32]], Mapping[str, npt.NDArray[np.float32]]]


def streamed_rows(
    events: EventColumns, *, cfg: ShardConfig | None = None, batch_events: int = 20_000
) -> Iterator[FeatureRows]:
    """Replay ``events`` in time order through one :class:`ShardProcessor`, in batches as a source would
    deliver them, and yield the feature rows the stream would score (touched users and fired timers).
    """
    ev = events.take(np.argsort(events.ts_ms, kind="stable"))
    proc = ShardProcessor(cfg or ShardConfig())
    for i in range(0, len(ev), batch_events):
        chunk = ev.take(np.arange(i, min(len(ev), i + batch_events)))
        res = proc.process(chunk)
        yield from (rows for rows in res.rows if len(rows))


def reference_from_events(
    events: EventColumns,
    score: ScoreFn,
    *,
    since_ms: int,
    cfg: ShardConfig | None = None,
    batch_events: int = 20_000,
    bins: int = 10,
) -> DriftReference:
    """The reference as the stream sees it: rows scored at or after ``since_ms`` while replaying ``events``.

    ``score`` maps a feature matrix to ``{"churn_risk": ..., "purchase_propensity": ...}``
    (see :func:`score_columns`). Replay everything before ``since_ms`` too: the
    state (windows, recency, timers) must be warm when the window starts.
    """
    feats: list[npt.NDArray[np.float32]] = []
    for rows in streamed_rows(events, cfg=cfg, batch_events=batch_events):
        if rows.version >= since_ms:
            feats.append(rows.features)
    if not feats:
        raise ValueError(f"no rows scored at or after {since_ms} (ms): the history ends before the window")
    x = np.concatenate(feats)
    return build_reference(x, score(x), bins=bins)


def score_columns(scorer: Scorer) -> ScoreFn:
    """A :data:`ScoreFn` over a :class:`~pipelines.scoring.scorer.Scorer`."""

    def fn(x: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        s = scorer.score(x)
        return {"churn_risk": s.churn_risk, "purchase_propensity": s.purchase_propensity}

    return fn
