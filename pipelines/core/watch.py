"""The at-risk watch: users whose score-driven label will flip before their next refresh are re-evaluated hourly.

Stages are rules over features, so every point in time at which a silent user's stage can
change is known in advance (rule timers, :mod:`pipelines.core.timers`). The at-risk flag
(预流失, the early warning) is different: it depends on the model's churn risk, which rises
day by day while a user is silent, so no threshold on a feature says when it crosses. With
a daily refresh alone the stored flag lags the truth by up to a day, and the users it misses
are exactly the ones crossing into the warning.

The watch closes that gap without scoring everyone hourly. When a user is refreshed at tick
``t``, their features are also computed as they will be at ``t + refresh`` if they stay
silent (features are a function of state and time, so this is exact for a silent user), and
both are put through the model's probabilities (no attributions), for the rows whose at-risk
answer depends on the scores at all (:meth:`Taxonomy.at_risk_reads_scores`). When the at-risk rule
gives a different answer at the two instants while the stage stays the same (a stage change
has its own exact rule timer), the user is re-evaluated at every tick until the answers
agree: the stored flag then lags by at most one tick. Everything here is a function of
state and tick, and the probe is batch-invariant, so the watch decides the same whatever the
batch sizes; it runs while a tick closes, before any later tick.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from pipelines.core.features import compute_features
from pipelines.core.state import ShardState
from pipelines.core.taxonomy import Taxonomy

F32 = npt.NDArray[np.float32]


class RiskProbe(Protocol):
    """Feature rows -> (churn risk, purchase propensity): the model without reasons (a Scorer's ``probe``)."""

    def __call__(self, features: F32) -> tuple[F32, F32]: ...


def flips_ahead(
    probe: RiskProbe,
    taxonomy: Taxonomy,
    state: ShardState,
    rows: npt.NDArray[np.int64],
    features: F32,
    stage: npt.NDArray[np.int8],
    t_ms: int,
    ahead_ms: int,
) -> npt.NDArray[np.int64]:
    """The ``rows`` (evaluated at ``t_ms`` with ``features`` and ``stage``) whose at-risk flag differs at ``t + ahead``.

    Rows whose stage differs at ``t + ahead`` are left out: their rule timer evaluates them at
    the change, and the flag is decided afresh there.
    """
    n = rows.shape[0]
    if n == 0:
        return rows
    later = compute_features(state, rows, t_ms + ahead_ms)
    later_stage = taxonomy.assign_stages(later)
    same = later_stage == stage
    # only rows whose answer depends on the scores go through the model (dormant users, under lifecycle-5,
    # are never at risk whatever their risk); the rest are decided by features and stage alone
    reads = same & (taxonomy.at_risk_reads_scores(features, stage) | taxonomy.at_risk_reads_scores(later, later_stage))
    churn, propensity = np.zeros(2 * n, np.float32), np.zeros(2 * n, np.float32)
    k = int(reads.sum())
    if k:
        c, p = probe(np.concatenate([features[reads], later[reads]]))
        churn[:n][reads], churn[n:][reads] = c[:k], c[k:]
        propensity[:n][reads], propensity[n:][reads] = p[:k], p[k:]
    now_flag = taxonomy.at_risk(features, stage, churn[:n], propensity[:n])
    later_flag = taxonomy.at_risk(later, later_stage, churn[n:], propensity[n:])
    return rows[(now_flag != later_flag) & same]
