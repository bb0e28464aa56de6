"""What the model says about a batch of rows: the contract between the scoring engine and the label step.

Scoring (:mod:`pipelines.scoring`) produces :class:`Scores`; the label step
(:mod:`pipelines.core.labels`) turns them into store rows. Both sides import it
from here, so the label step never depends on torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa

N_REASONS = 3


_EMPTY_REASONS = pa.array([], pa.list_(pa.string()))  # immutable; building one costs ~20 us


F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Scores:
    churn_risk: F32
    purchase_propensity: F32
    reasons: pa.ListArray  # list<string> per row, strongest driver first
    #: the reasons' feature indices per row (n x k, strongest first, -1 padded): what playbook rules test
    reason_features: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros((0, N_REASONS), np.int16))

    def __len__(self) -> int:
        return int(self.churn_risk.shape[0])


def take_scores(s: Scores, start: int, end: int) -> Scores:
    """Rows ``[start, end)`` of ``s`` (views, no copies)."""
    return Scores(
        s.churn_risk[start:end],
        s.purchase_propensity[start:end],
        s.reasons.slice(start, end - start),
        s.reason_features[start:end],
    )


def concat_scores(parts: Sequence[Scores]) -> Scores:
    """``parts`` stacked in order."""
    if not parts:
        return Scores(np.zeros(0, np.float32), np.zeros(0, np.float32), _EMPTY_REASONS)
    return Scores(
        np.concatenate([p.churn_risk for p in parts]),
        np.concatenate([p.purchase_propensity for p in parts]),
        pa.concat_arrays([p.reasons for p in parts]),
        np.concatenate([p.reason_features for p in parts]),
    )
