"""Training sets and temporal holdouts from event history, built with the streaming feature code.

Events are replayed in time order through a :class:`~pipelines.core.state.ShardState`
(the class the streaming shards use). At an *origin* ``t`` the features of every
user seen so far are read as of ``t`` (:func:`~pipelines.core.features.compute_features`)
and the labels from the events in ``(t, t + H]``:

* churn: no *activity* (any event type but explicit exits and ``leave_group``) in ``(t, t + H]``
* purchase: at least one ``order`` in ``(t, t + H]``

**No leakage.** A training set for ``--as-of A`` drops every event after ``A``
before anything else, and places its origins so that ``t + H <= A``: every label
is observable at ``A``. A holdout at origin ``A`` reads features from events up to
``A`` and labels from ``(A, A + H]`` only, so a model trained with ``--as-of A``
is evaluated on outcomes it has never seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipelines.contract.events import TYPE_CODE, EventColumns
from pipelines.contract.time import DAY_MS, NEVER, day_index
from pipelines.core.features import compute_features
from pipelines.core.state import ACTIVE_CODE, ShardState
from pipelines.offline.history import replay_until, sort_by_time

__all__ = [
    "HistorySummary",
    "HoldoutSet",
    "TrainingSet",
    "build_holdout",
    "build_training_set",
    "fingerprint",
    "replay_until",
    "sort_by_time",
]

_ORDER = TYPE_CODE["order"]


def _empty_i64() -> npt.NDArray[np.int64]:
    return np.zeros(0, np.int64)


def _empty_f32() -> npt.NDArray[np.float32]:
    return np.zeros((0, 0), np.float32)


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Rows of (features at an origin, labels of the following H days), all origins stacked."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]  # columns: churned (no activity in H days), ordered in H days
    origins_ms: tuple[int, ...]
    fingerprint: str
    user_key: npt.NDArray[np.int64] = field(default_factory=_empty_i64)  # per row: the user (for grouped splits)
    origin: npt.NDArray[np.int64] = field(default_factory=_empty_i64)  # per row: index into origins_ms
    x_as_of: npt.NDArray[np.float32] = field(default_factory=_empty_f32)  # every user at as-of, unlabelled
    n_events: int = 0  # events at or before as-of


def fingerprint(ev: EventColumns) -> str:
    """Content hash of the events a model was trained on (users, times, types, amounts)."""
    h = hashlib.sha256()
    for a in (ev.user_key, ev.ts_ms, ev.type_code, ev.amount):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def _labels(ev: EventColumns, lo: int, t: int, h_ms: int, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """(churned, ordered) of ``keys`` from the time-sorted events in ``(t, t + h]``; ``lo`` = first index after t."""
    hi = int(np.searchsorted(ev.ts_ms, t + h_ms, side="right"))
    uk, tc = ev.user_key[lo:hi], ev.type_code[lo:hi]
    active = np.unique(uk[ACTIVE_CODE[tc]])
    ordered = np.unique(uk[tc == _ORDER])
    return np.stack([~np.isin(keys, active), np.isin(keys, ordered)], axis=1).astype(np.float32)


def training_origins(
    as_of_ms: int, horizon_days: int, *, first_ms: int, origins: int, step_days: int, min_history_days: float
) -> list[int]:
    """Origins ``as_of - H - k * step`` (k = 0..origins-1), oldest first, each with some history behind it."""
    h_ms = horizon_days * DAY_MS
    cands = (as_of_ms - h_ms - k * step_days * DAY_MS for k in range(origins))
    return sorted(t for t in cands if t >= first_ms + min_history_days * DAY_MS)


def build_training_set(
    events: EventColumns,
    *,
    as_of_ms: int,
    horizon_days: int,
    origins: int = 4,
    step_days: int = 7,
    min_history_days: float = 7.0,
) -> TrainingSet:
    """Features at rolling origins before ``as_of`` with labels from the following H days.

    Also returns the features of every user as of ``as_of`` itself (no labels):
    the population the model will first score, kept as the drift reference.
    """
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days}")
    ev = sort_by_time(events.take(events.ts_ms <= as_of_ms))
    if len(ev) == 0:
        raise ValueError("no events at or before --as-of")
    h_ms = horizon_days * DAY_MS
    ts_origins = training_origins(
        as_of_ms,
        horizon_days,
        first_ms=int(ev.ts_ms[0]),
        origins=origins,
        step_days=step_days,
        min_history_days=min_history_days,
    )
    if not ts_origins:
        raise ValueError(
            f"history too short: training needs events from at least {horizon_days + min_history_days:g} days "
            "before --as-of (horizon plus some history before the first origin)"
        )
    st = ShardState(capacity=1 << 16)
    xs, ys, keys, idx = [], [], [], []
    nxt = 0
    for i, t in enumerate(ts_origins):
        nxt = replay_until(st, ev, nxt, t)
        rows = np.arange(st.n, dtype=np.int64)
        xs.append(compute_features(st, rows, t))
        k = st.user_key[: st.n].copy()
        ys.append(_labels(ev, nxt, t, h_ms, k))
        keys.append(k)
        idx.append(np.full(st.n, i, np.int64))
    replay_until(st, ev, nxt, as_of_ms)
    x_as_of = compute_features(st, np.arange(st.n, dtype=np.int64), as_of_ms)
    return TrainingSet(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        origins_ms=tuple(ts_origins),
        fingerprint=fingerprint(ev),
        user_key=np.concatenate(keys),
        origin=np.concatenate(idx),
        x_as_of=x_as_of,
        n_events=len(ev),
    )


# --------------------------------------------------------------------------- holdout


@dataclass(frozen=True, slots=True)
class HistorySummary:
    """BG/NBD input per user, in days from the user's first transaction: (repeat count, last repeat, observed)."""

    x: npt.NDArray[np.float64]
    t_x: npt.NDArray[np.float64]
    big_t: npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class HoldoutSet:
    """Every user seen up to ``origin``: features at the origin, outcomes of ``(origin, origin + H]``.

    ``prior_x``/``prior_y`` are the same users' features at ``origin - H`` and
    outcomes of ``(origin - H, origin]``: observable at the origin, they are what
    a baseline may be fitted on without looking past the origin.
    """

    origin_ms: int
    horizon_days: int
    user_id: npt.NDArray[np.object_]
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    prior_x: npt.NDArray[np.float32]
    prior_y: npt.NDArray[np.float32]
    orders: HistorySummary  # orders, counted from the user's first event
    activity: HistorySummary  # distinct active days, counted from the first active day
    events_before: int
    events_in_window: int


def build_holdout(events: EventColumns, *, origin_ms: int, horizon_days: int) -> HoldoutSet:
    """The temporal holdout at ``origin_ms`` (see :class:`HoldoutSet`).

    Fails when the events do not cover ``(origin, origin + H]`` (the labels would
    claim churn that is only missing data).
    """
    ev = sort_by_time(events)
    h_ms = horizon_days * DAY_MS
    if len(ev) == 0 or int(ev.ts_ms[0]) > origin_ms:
        raise ValueError("no events at or before the evaluation as-of date")
    end = int(ev.ts_ms[-1])
    if end < origin_ms + h_ms - DAY_MS:
        raise ValueError(
            f"the events end {(origin_ms + h_ms - end) / DAY_MS:.1f} days before as-of + {horizon_days} days: "
            "evaluation needs the whole horizon after --as-of in the events file (use an earlier --as-of)"
        )
    prior_t = origin_ms - h_ms
    st = ShardState(capacity=1 << 16)
    nxt = replay_until(st, ev, 0, prior_t)
    n_prior = st.n
    prior_x = compute_features(st, np.arange(n_prior, dtype=np.int64), prior_t) if n_prior else None
    nxt = replay_until(st, ev, nxt, origin_ms)
    n = st.n
    rows = np.arange(n, dtype=np.int64)
    keys = st.user_key[:n].copy()
    x = compute_features(st, rows, origin_ms)
    y = _labels(ev, nxt, origin_ms, h_ms, keys)
    # users first seen after origin - H have no prior row: they are left out of the prior set
    prior_y = _labels(ev, int(np.searchsorted(ev.ts_ms, prior_t, side="right")), prior_t, h_ms, keys[:n_prior])
    hi = int(np.searchsorted(ev.ts_ms, origin_ms + h_ms, side="right"))
    return HoldoutSet(
        origin_ms=origin_ms,
        horizon_days=horizon_days,
        user_id=st.user_id[:n].copy(),
        x=x,
        y=y,
        prior_x=prior_x if prior_x is not None else np.zeros((0, x.shape[1]), np.float32),
        prior_y=prior_y,
        orders=_order_summary(st, origin_ms),
        activity=_activity_summary(st, ev, nxt, origin_ms),
        events_before=nxt,
        events_in_window=hi - nxt,
    )


def _order_summary(st: ShardState, origin_ms: int) -> HistorySummary:
    """Orders as BG/NBD transactions, with the user's first event as birth."""
    n = st.n
    first = st.ts["first_ts"][:n]
    last = st.ts["last_order_ts"][:n]
    count = st.order_count[:n].astype(np.float64)
    big_t = np.maximum((origin_ms - first) / DAY_MS, 0.0)
    t_x = np.where((count > 0) & (last != NEVER), (last - first) / DAY_MS, 0.0)
    return HistorySummary(count, np.clip(t_x, 0.0, big_t), big_t)


def _activity_summary(st: ShardState, ev: EventColumns, end: int, origin_ms: int) -> HistorySummary:
    """Distinct active days as BG/NBD transactions (the first active day is the birth)."""
    n = st.n
    active = ACTIVE_CODE[ev.type_code[:end]]
    rows = st.lookup(ev.user_key[:end][active])
    days = day_index(ev.ts_ms[:end][active])
    x = np.zeros(n)
    t_x = np.zeros(n)
    big_t = np.zeros(n)
    if rows.shape[0]:
        d0 = int(days.min())
        pair = np.unique(rows * (1 << 24) + (days - d0))
        r, d = pair >> 24, (pair & ((1 << 24) - 1)).astype(np.float64)
        n_days = np.bincount(r, minlength=n).astype(np.float64)
        first = np.full(n, np.inf)
        np.minimum.at(first, r, d)
        last = np.full(n, -np.inf)
        np.maximum.at(last, r, d)
        seen = n_days > 0
        today = float(day_index(np.array([origin_ms - 1], np.int64))[0] - d0)
        x[seen] = n_days[seen] - 1
        t_x[seen] = last[seen] - first[seen]
        big_t[seen] = today - first[seen]
    return HistorySummary(x, t_x, big_t)
