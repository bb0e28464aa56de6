"""``lifecycle score``: every user of an event history scored as of one instant, in the ``user_scores`` layout.

The history is replayed through the streaming state (:func:`~pipelines.offline.history.state_as_of`), the
features are those of the stream, and the rows come from THE label step
(:func:`pipelines.core.labels.label_rows`): the same columns and values as ``user_scores`` rows the stream
writes at that instant. Offline scoring decides no playbook actions (:func:`~pipelines.core.labels.no_actions`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contract.events import EventColumns
from pipelines.contract.time import Clock
from pipelines.core.defaults import default_taxonomy
from pipelines.core.labels import label_rows, no_actions
from pipelines.core.taxonomy import Taxonomy
from pipelines.offline.history import rows_as_of, sort_by_time, state_as_of
from pipelines.scoring.scorer import Scorer


def score_as_of(
    events: EventColumns,
    *,
    cutoff_ms: int,
    scorer: Scorer,
    taxonomy: Taxonomy | None = None,
    clock: Clock = time.time,
) -> pa.Table:
    """One ``user_scores`` row per user seen at or before ``cutoff_ms``, scored as of that instant, by user id.

    Events after ``cutoff_ms`` are dropped first, so they cannot change anything. ``version``
    is ``cutoff_ms`` (the event-time instant the row describes, as in the stream);
    ``scored_at`` is the wall clock (``clock``); the action columns are null (module docstring).
    """
    tax = taxonomy or default_taxonomy()
    ev = sort_by_time(events.take(events.ts_ms <= cutoff_ms))
    st = state_as_of(ev, cutoff_ms)
    rows = rows_as_of(st, np.arange(st.n, dtype=np.int64), cutoff_ms, tax, version=cutoff_ms)
    scores = scorer.score(rows.features)
    labeled = label_rows(
        rows, scores, tax, no_actions, model_version=scorer.model_version, scored_at_ms=int(clock() * 1000)
    )
    (user_scores,) = (r.data for r in labeled.records if r.table == "user_scores")
    return user_scores.sort_by("user_id")


def write_scores(table: pa.Table, out: Path) -> None:
    """Write scores as Parquet (reasons as a list column) or CSV (reasons joined by ``"; "``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    name = out.name.lower()
    if name.endswith((".parquet", ".pq")):
        pq.write_table(table, out)
    elif name.endswith(".csv"):
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        frame = frame.with_columns(pl.col("reasons").list.join("; "))
        frame.write_csv(out)
    else:
        raise ValueError(f"{out}: output must end in .csv or .parquet")
