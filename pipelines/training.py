"""Training sets from event history, built with the streaming feature code.

Events are replayed in time order through a :class:`~pipelines.state.ShardState`
(the same class the streaming shards use). At each *origin* ``t`` the features
of every user seen so far are taken as of ``t``, and the labels are read from
the events in ``(t, t + H]``. Origins are placed so that ``t + H <= as_of``:
every label is observable before ``as_of``, so nothing after ``as_of`` leaks
into training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipelines.events import TYPE_CODE, EventColumns, decode_batch
from pipelines.features import compute_features
from pipelines.io.sources import read_batches
from pipelines.state import ACTIVE_CODE, DAY_MS, ShardState

_CHUNK = 250_000


@dataclass(frozen=True, slots=True)
class TrainingSet:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]  # columns: churned (no activity in H days), ordered in H days
    origins_ms: tuple[int, ...]
    fingerprint: str


def load_events(path: Path, *, now_ms: int) -> tuple[EventColumns, int]:
    """Decode an NDJSON(.gz) event file with the streaming decoder; returns (events, rejected)."""
    parts: list[EventColumns] = []
    rejected = 0
    for raw in read_batches(path):
        d = decode_batch(raw, now_ms=now_ms)
        parts.append(d.events)
        rejected += len(d.rejects)
    return EventColumns.concat(parts), rejected


def replay_until(st: ShardState, ev: EventColumns, start: int, until_ms: int) -> int:
    """Apply the time-sorted events from index ``start`` up to ``until_ms`` (inclusive); return the next index."""
    end = int(np.searchsorted(ev.ts_ms, until_ms, side="right"))
    for i in range(start, end, _CHUNK):
        st.apply(ev.take(np.arange(i, min(end, i + _CHUNK))))
    return end


def sort_by_time(ev: EventColumns) -> EventColumns:
    return ev.take(np.argsort(ev.ts_ms, kind="stable"))


def build_training_set(
    events: EventColumns, *, as_of_ms: int, horizon_days: int, origins: int = 4, step_days: int = 7
) -> TrainingSet:
    """Features at ``origins`` rolling origins before ``as_of`` with labels from the following H days."""
    ev = sort_by_time(events.take(events.ts_ms <= as_of_ms))
    if len(ev) == 0:
        raise ValueError("no events at or before --as-of")
    h_ms = horizon_days * DAY_MS
    first = int(ev.ts_ms[0])
    ts_origins = sorted(
        t for k in range(origins) if (t := as_of_ms - h_ms - k * step_days * DAY_MS) > first + step_days * DAY_MS
    )
    if not ts_origins:
        raise ValueError(f"history too short: need events from before {horizon_days + step_days} days ahead of --as-of")
    st = ShardState(capacity=1 << 16)
    xs, ys = [], []
    nxt = 0
    active = ACTIVE_CODE[ev.type_code]
    is_order = ev.type_code == TYPE_CODE["order"]
    for t in ts_origins:
        nxt = replay_until(st, ev, nxt, t)
        rows = np.arange(st.n, dtype=np.int64)
        xs.append(compute_features(st, rows, t))
        lo, hi = nxt, int(np.searchsorted(ev.ts_ms, t + h_ms, side="right"))
        window_active = np.unique(ev.user_key[lo:hi][active[lo:hi]])
        window_order = np.unique(ev.user_key[lo:hi][is_order[lo:hi]])
        keys = st.user_key[: st.n]
        ys.append(np.stack([~np.isin(keys, window_active), np.isin(keys, window_order)], axis=1).astype(np.float32))
    fp = hashlib.sha256()
    fp.update(np.asarray([len(ev), first, int(ev.ts_ms[-1])], np.int64).tobytes())
    fp.update(ev.user_key[:: max(1, len(ev) // 10_000)].tobytes())
    return TrainingSet(np.concatenate(xs), np.concatenate(ys), tuple(ts_origins), fp.hexdigest()[:16])
