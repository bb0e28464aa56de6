"""The feature registry and the one function that turns shard state into feature vectors.

Training (``lifecycle train``), batch scoring and the streaming flow all call
:func:`compute_features` on a :class:`~pipelines.core.state.ShardState`; there is no
second implementation, hence no training/serving skew. The registry
(:data:`REGISTRY`) names every column, says what it means, how the model
should scale it, and how to phrase it as a reason code. Its hash is stored in
model artifacts so that a model never silently reads the wrong columns.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.contract.events import CHANNELS
from pipelines.contract.time import DAY_MS, NEVER, day_index
from pipelines.core.state import FAMILIES, HORIZON_DAYS, ShardState

FEATURE_VERSION = 1

_FAMILY_WORDS: dict[str, str] = {
    "acquire": "sign-ups/follows",
    "message": "message reads",
    "browse": "browsing",
    "social": "sharing/referrals",
    "group_join": "group joins",
    "live": "live-stream watching",
    "coupon_claim": "coupon claims",
    "coupon_redeem": "coupon use",
    "cart": "add-to-cart",
    "order": "orders",
    "refund": "refunds",
    "checkin": "check-ins",
    "exit": "unfollow/leave signals",
}
ACTIVE_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in ("exit", "refund"))
CAP_DAYS = 365.0


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One feature column: its name, meaning, scaling and reason phrases.

    ``log`` marks heavy-tailed non-negative values the model sees as log1p.
    ``low``/``high`` are reason phrases used when the value is below/above the
    training mean; ``{v}`` is the raw value.
    """

    name: str
    meaning: str
    unit: str
    log: bool
    low: str
    high: str
    #: value that separates the low and high phrase; None = the training mean. Ratios whose
    #: meaning flips at 1 ("fell" / "rising") must not be worded against an average instead.
    neutral: float | None = None


def _build_registry() -> tuple[FeatureSpec, ...]:
    specs: list[FeatureSpec] = []
    for fam in FAMILIES:
        words = _FAMILY_WORDS[fam]
        for h in HORIZON_DAYS:
            specs.append(
                FeatureSpec(
                    f"{fam}_{h}d",
                    f"decayed count of {words} events (time constant {h} days)",
                    "events",
                    True,
                    f"little {words} in the last {h} days",
                    f"recent {words} ({h}-day window)",
                )
            )
    for ch in CHANNELS:
        specs.append(
            FeatureSpec(
                f"channel_{ch}_30d",
                f"decayed count of events on {ch} (30 days)",
                "events",
                True,
                f"rarely seen on {ch} lately",
                f"mostly engaged via {ch}",
            )
        )
    for h in HORIZON_DAYS:
        specs.append(
            FeatureSpec(
                f"activity_{h}d",
                f"decayed count of all activity (time constant {h} days)",
                "events",
                True,
                f"low overall activity in the last {h} days",
                f"high overall activity in the last {h} days",
            )
        )
        specs.append(
            FeatureSpec(
                f"order_value_{h}d",
                f"decayed order value (time constant {h} days)",
                "CNY",
                True,
                f"low spend in the last {h} days",
                f"high spend in the last {h} days",
            )
        )
    specs += [
        FeatureSpec(
            "days_since_active",
            "days since the last activity (capped at 365)",
            "days",
            False,
            "active {v:.0f} days ago",
            "no activity for {v:.0f} days",
        ),
        FeatureSpec(
            "days_since_order",
            "days since the last order (365 if never)",
            "days",
            False,
            "ordered {v:.0f} days ago",
            "no order for {v:.0f} days",
        ),
        FeatureSpec(
            "days_since_message",
            "days since the last message read/click (365 if never)",
            "days",
            False,
            "read a message {v:.0f} days ago",
            "no message read for {v:.0f} days",
        ),
        FeatureSpec(
            "days_since_acquire",
            "days since the last register/follow/add_contact (365 if never)",
            "days",
            False,
            "recently joined ({v:.0f} days ago)",
            "joined long ago",
        ),
        FeatureSpec(
            "tenure_days",
            "days since the first event seen (capped at 365)",
            "days",
            False,
            "new relationship ({v:.0f} days)",
            "long relationship ({v:.0f} days)",
        ),
        FeatureSpec(
            "lifetime_orders",
            "orders since first seen",
            "orders",
            True,
            "few orders so far ({v:.0f})",
            "many orders so far ({v:.0f})",
        ),
        FeatureSpec(
            "lifetime_value",
            "order value since first seen",
            "CNY",
            True,
            "low lifetime spend (¥{v:.0f})",
            "high lifetime spend (¥{v:.0f})",
        ),
        FeatureSpec(
            "avg_order_value",
            "lifetime value / orders",
            "CNY",
            True,
            "small baskets (¥{v:.0f})",
            "large baskets (¥{v:.0f})",
        ),
        FeatureSpec(
            "refund_ratio",
            "refunded value / ordered value",
            "ratio",
            False,
            "few refunds",
            "many refunds ({v:.0%} refunded)",
        ),
        FeatureSpec(
            "coupon_redeem_rate",
            "coupons redeemed / claimed",
            "ratio",
            False,
            "coupon use fell ({v:.0%} redeemed)",
            "redeems coupons ({v:.0%})",
        ),
        FeatureSpec(
            "in_group",
            "1 if the user is in a community group",
            "flag",
            False,
            "not in a community group",
            "member of a community group",
        ),
        FeatureSpec(
            "exited",
            "1 if the user unfollowed/deleted/unsubscribed and was not active since",
            "flag",
            False,
            "still connected",
            "unfollowed or unsubscribed",
        ),
        FeatureSpec(
            "active_days_7",
            "distinct active days in the last 7 days",
            "days",
            False,
            "active on only {v:.0f} of the last 7 days",
            "active on {v:.0f} of the last 7 days",
        ),
        FeatureSpec(
            "active_days_30",
            "distinct active days in the last 30 days",
            "days",
            False,
            "active on only {v:.0f} of the last 30 days",
            "active on {v:.0f} of the last 30 days",
        ),
        FeatureSpec(
            "trend_activity",
            "activity 7d vs 30d, rate ratio (1 = steady)",
            "ratio",
            False,
            "activity fell (x{v:.2f} vs the month)",
            "activity rising (x{v:.2f})",
            neutral=1.0,
        ),
        FeatureSpec(
            "trend_orders",
            "orders 30d vs 90d, rate ratio (1 = steady)",
            "ratio",
            False,
            "ordering slowed (x{v:.2f})",
            "ordering picked up (x{v:.2f})",
            neutral=1.0,
        ),
    ]
    return tuple(specs)


REGISTRY: tuple[FeatureSpec, ...] = _build_registry()
FEATURE_NAMES: tuple[str, ...] = tuple(s.name for s in REGISTRY)
INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(REGISTRY)
#: Features that grow with time alone, and the state timestamp each counts from: a rule comparing one with
#: a constant changes its answer at ``timestamp + constant`` with no new event (the taxonomy's timers).
TIMED_FEATURES: dict[str, str] = {
    "days_since_active": "last_active_ts",
    "days_since_order": "last_order_ts",
    "days_since_message": "last_message_ts",
    "days_since_acquire": "last_acquire_ts",
    "tenure_days": "first_ts",
}
LOG_MASK: npt.NDArray[np.bool_] = np.array([s.log for s in REGISTRY], dtype=bool)


def schema_hash(names: tuple[str, ...] = FEATURE_NAMES, version: int = FEATURE_VERSION) -> str:
    """Identity of the feature layout; artifacts record it and loading checks it."""
    return hashlib.sha256(f"v{version}:".encode() + "\n".join(names).encode()).hexdigest()[:16]


def _days_since(ts: npt.NDArray[np.int64], now_ms: int) -> npt.NDArray[np.float64]:
    d = (now_ms - ts).astype(np.float64) / DAY_MS
    return np.where(ts == NEVER, CAP_DAYS, np.clip(d, 0.0, CAP_DAYS))


def _active_days(st: ShardState, rows: npt.NDArray[np.int64], now_ms: int, k: int) -> npt.NDArray[np.float64]:
    """Popcount of the bitmap bits that fall in the last ``k`` calendar days before ``now``."""
    last = st.ts["last_active_ts"][rows]
    gap = day_index(np.full(rows.shape[0], now_ms, np.int64)) - day_index(last)
    width = np.clip(k - gap, 0, 64)
    mask = np.where(
        width >= 64,
        np.uint64(0xFFFFFFFFFFFFFFFF),
        (np.left_shift(np.uint64(1), np.minimum(width, 63).astype(np.uint64)) - np.uint64(1)),
    )
    out = np.bitwise_count(st.active_bits[rows] & mask).astype(np.float64)
    return np.where(last == NEVER, 0.0, out)


def compute_features(st: ShardState, rows: npt.NDArray[np.int64], now_ms: int) -> npt.NDArray[np.float32]:
    """Feature matrix (len(rows) x N_FEATURES, float32) of ``rows`` as of ``now_ms``.

    Pure: reads the state, never writes it. ``now_ms`` must not be earlier than
    the rows' newest events (the shard clock satisfies this).
    """
    m = rows.shape[0]
    out = np.empty((m, N_FEATURES), np.float32)
    if m == 0:
        return out
    ts = st.ts
    age = (ts["ref_ts"][rows] - now_ms).astype(np.float64) / DAY_MS  # <= 0
    age = np.where(ts["ref_ts"][rows] == NEVER, 0.0, np.minimum(age, 0.0))
    nh = len(HORIZON_DAYS)
    decay = np.stack([np.exp(age / h) for h in HORIZON_DAYS], axis=1)  # m x nh
    fam = st.decayed[rows].reshape(m, len(FAMILIES), nh) * decay[:, None, :]
    col = 0
    out[:, col : col + fam.shape[1] * nh] = fam.reshape(m, -1)
    col += fam.shape[1] * nh
    h30 = HORIZON_DAYS.index(30)
    out[:, col : col + len(CHANNELS)] = st.channel_30d[rows] * decay[:, h30 : h30 + 1]
    col += len(CHANNELS)
    active_idx = [FAMILIES.index(f) for f in ACTIVE_FAMILIES]
    activity = fam[:, active_idx, :].sum(axis=1)  # m x nh
    value = st.value_decayed[rows] * decay
    for h in range(nh):
        out[:, col] = activity[:, h]
        out[:, col + 1] = value[:, h]
        col += 2
    orders = st.order_count[rows].astype(np.float64)
    ltv = st.order_value[rows]
    claims = st.coupon_claims[rows].astype(np.float64)
    first = ts["first_ts"][rows]
    tenure = np.where(first == NEVER, 0.0, np.clip((now_ms - first) / DAY_MS, 0.0, CAP_DAYS))
    last_active = ts["last_active_ts"][rows]
    exited = (ts["last_exit_ts"][rows] != NEVER) & (ts["last_exit_ts"][rows] >= last_active)
    i7, i30, i90 = (HORIZON_DAYS.index(h) for h in (7, 30, 90))
    order_fam = FAMILIES.index("order")
    extra = [
        _days_since(last_active, now_ms),
        _days_since(ts["last_order_ts"][rows], now_ms),
        _days_since(ts["last_message_ts"][rows], now_ms),
        _days_since(ts["last_acquire_ts"][rows], now_ms),
        tenure,
        orders,
        ltv,
        np.where(orders > 0, ltv / np.maximum(orders, 1.0), 0.0),
        np.clip(st.refund_value[rows] / np.maximum(ltv, 1.0), 0.0, 1.0),
        np.clip(st.coupon_redeems[rows] / np.maximum(claims, 1.0), 0.0, 1.0),
        (ts["last_join_ts"][rows] > ts["last_leave_ts"][rows]).astype(np.float64),
        exited.astype(np.float64),
        _active_days(st, rows, now_ms, 7),
        _active_days(st, rows, now_ms, 30),
        np.clip((activity[:, i7] + 0.05) / (activity[:, i30] * 7 / 30 + 0.05), 0.0, 5.0),
        np.clip((fam[:, order_fam, i30] + 0.05) / (fam[:, order_fam, i90] * 30 / 90 + 0.05), 0.0, 5.0),
    ]
    for v in extra:
        out[:, col] = v
        col += 1
    assert col == N_FEATURES, (col, N_FEATURES)
    return out
