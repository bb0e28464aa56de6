"""What evaluating users at a closed tick yields: :class:`FeatureRows`, the unit the scorer and the label step take.

Apart from :mod:`pipelines.core.shard` (which makes them) because everything downstream of the
shard (labels, store rows, offline history) reads them and needs nothing else of the shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class FeatureRows:
    """Users evaluated at one closed tick, with their features as of it."""

    user_id: npt.NDArray[np.object_]
    rows: npt.NDArray[np.int64]  # the users' rows in the shard state (action ledger, consent lookups)
    features: npt.NDArray[np.float32]
    stage: npt.NDArray[np.int8]
    prev_stage: npt.NDArray[np.int8]  # -1: first time this user is scored
    last_event_ms: npt.NDArray[np.int64]  # newest event of the user
    #: rows evaluated because their own events changed them (not a timer or refresh): the
    #: only rows whose event-to-score delay is a freshness measurement
    from_events: npt.NDArray[np.bool_]
    #: the tick (event-time ms) the rows were evaluated at: monotonic per user, the ReplacingMergeTree
    #: version; per row when rows of several ticks travel together (:func:`concat_rows`, in tick order)
    version: int | npt.NDArray[np.int64]
    read_at_ms: int  # wall-clock ms the newest contributing batch was read (0 for timer-only rows)
    #: rows scored by a flush without committing their stage (see :meth:`ShardProcessor.flush`): the playbook
    #: grants them nothing (a grant changes state); None = no such row
    provisional: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return int(self.user_id.shape[0])


def concat_rows(parts: list[FeatureRows]) -> FeatureRows:
    """Rows of several ticks as one block, in tick order, each row with its own ``version``."""
    if len(parts) == 1:
        return parts[0]
    n = [len(p) for p in parts]
    prov = [p.provisional if p.provisional is not None else np.zeros(len(p), bool) for p in parts]
    any_prov = any(p.provisional is not None for p in parts)
    return FeatureRows(
        user_id=np.concatenate([p.user_id for p in parts]),
        rows=np.concatenate([p.rows for p in parts]),
        features=np.concatenate([p.features for p in parts]),
        stage=np.concatenate([p.stage for p in parts]),
        prev_stage=np.concatenate([p.prev_stage for p in parts]),
        last_event_ms=np.concatenate([p.last_event_ms for p in parts]),
        from_events=np.concatenate([p.from_events for p in parts]),
        version=np.concatenate([np.full(k, p.version, np.int64) for k, p in zip(n, parts, strict=True)]),
        read_at_ms=max(p.read_at_ms for p in parts),
        provisional=np.concatenate(prov) if any_prov else None,
    )
