"""The simulator's hidden dynamics: acquisition, activity rates, event mixes, basket sizes, stage transitions.

These numbers are the ground truth the simulated users live by (:mod:`pipelines.offline.simulate`); the
pipeline never sees them. They are kept apart from the simulation loop so that the loop reads as an
algorithm and the parameters as a table.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipelines.contract.events import CHANNELS, EVENT_TYPES, TYPE_CODE
from pipelines.contract.time import DAY_MS, HOUR_MS

#: Latent lifecycle stages; the index is the stage code used internally.
STAGES: tuple[str, ...] = ("new", "growing", "mature", "dormant", "churned")
#: Latent value segments; the index is the segment code used internally.
SEGMENTS: tuple[str, ...] = ("vip", "regular", "potential")

_UNACQUIRED = -1


_N_STAGES = len(STAGES)


_N_SEGMENTS = len(SEGMENTS)


_N_TYPES = len(EVENT_TYPES)


_CH = {name: i for i, name in enumerate(CHANNELS)}


_T = TYPE_CODE


#: Acquisition channel mix: WeCom, mini-programs and official accounts dominate.
_ACQ_CHANNEL_WEIGHTS: dict[str, float] = {
    "wecom": 0.30,
    "mini_program": 0.22,
    "official_account": 0.20,
    "app": 0.08,
    "douyin": 0.08,
    "community_group": 0.05,
    "offline_store": 0.04,
    "web": 0.015,
    "sms": 0.01,
    "other": 0.005,
}


#: Share of a user's events that arrive on their acquisition channel.
_HOME_CHANNEL_P = 0.8


#: Value segment mix (vip, regular, potential).
_SEGMENT_P = (0.05, 0.35, 0.60)


#: Where existing users start: growing, mature, dormant.
_EXISTING_STAGE_P = (0.35, 0.35, 0.30)


#: Events per user-day by stage (churned users only ever emit an exit event).
_STAGE_RATE = np.array([1.6, 0.7, 1.0, 0.03, 0.0])


#: Event-rate multiplier by segment (vip users are simply more engaged).
_SEGMENT_RATE = np.array([1.4, 1.0, 0.85])


#: Multiplier on the weights of order-intent types (order, add_to_cart) by segment.
_SEGMENT_ORDER_MULT = np.array([3.0, 1.4, 0.7])


#: Promotion days: more traffic, more coupons and orders, more win-back.
_PROMO_RATE_MULT = 3.0


_PROMO_TYPE_MULT = {"coupon_claim": 2.0, "order": 1.5, "add_to_cart": 1.5}


#: Per-user activity heterogeneity: gamma with mean 1 (shape 2).
_ACTIVITY_SHAPE = 2.0


#: Type weights per stage; missing types weigh zero. Churned has a dummy row.
# fmt: off
_STAGE_TYPE_WEIGHTS: tuple[dict[str, float], ...] = (
    {  # new: reading, browsing, onboarding coupons
        "message_read": 30, "message_click": 8, "page_view": 25, "coupon_claim": 15, "join_group": 5,
        "share": 2, "add_to_cart": 6, "order": 3, "checkin": 4, "live_watch": 2,
    },
    {  # growing: first purchases
        "message_read": 22, "message_click": 8, "page_view": 22, "coupon_claim": 8, "add_to_cart": 10,
        "order": 6, "share": 4, "join_group": 3, "live_watch": 5, "checkin": 6, "leave_group": 1,
    },
    {  # mature: buys, shares, refers, watches live streams
        "message_read": 15, "message_click": 7, "page_view": 18, "coupon_claim": 6, "add_to_cart": 12,
        "order": 14, "share": 7, "referral": 3, "join_group": 3, "live_watch": 8, "checkin": 8,
        "leave_group": 1,
    },
    {  # dormant: mostly a message read now and then
        "message_read": 80, "message_click": 5, "page_view": 10, "leave_group": 3, "coupon_claim": 2,
    },
    {"message_read": 1},  # churned: rate 0, never sampled
)


#: Follow-up events: probability and delay range (ms) after the triggering event.
_REDEEM_P = 0.30


_REDEEM_DELAY_MEAN_MS = 6 * HOUR_MS


_REDEEM_DELAY_MAX_MS = 3 * DAY_MS


_REFUND_P = 0.06


_REFUND_DELAY_MS = (2 * HOUR_MS, 5 * DAY_MS)


_REFUND_FULL_P = 0.6


#: Lognormal order amounts in CNY: median by segment, shared sigma.
_AMOUNT_MEDIAN = np.array([600.0, 150.0, 60.0])


_AMOUNT_SIGMA = 0.6


#: Daily transition hazards.
_P_NEW_TO_GROWING = 0.12


_P_NEW_TO_DORMANT = 0.06


_P_GROWING_TO_MATURE = 0.04


_P_GROWING_TO_DORMANT = 0.02


_P_MATURE_TO_DORMANT = 0.008


_P_DORMANT_TO_CHURNED = 0.04


#: Dormancy hazard multiplier by segment: vip users stay longer.
_SEGMENT_DORMANCY_MULT = np.array([0.5, 0.9, 1.2])


#: Win-back probability per day, (normal, promo day).
_P_REACTIVATE_DORMANT = (0.01, 0.08)


_P_REACTIVATE_CHURNED = (0.002, 0.03)


#: Share of users entering churned who unfollow / delete / unsubscribe explicitly.
_EXPLICIT_EXIT_P = 0.4


#: Hour-of-day weights in UTC+8: lunch peak and an evening 20:00-22:00 peak.
_HOUR_WEIGHTS = np.array(
    [1.0, 0.5, 0.3, 0.2, 0.2, 0.4, 1.0, 2.5, 3.5, 3.5, 3.5, 4.5,
     6.0, 4.5, 3.0, 3.0, 3.0, 3.5, 4.0, 5.0, 6.5, 7.0, 6.0, 3.0]
)  # fmt: skip


def _acquire_type(channel: str) -> int:
    """Contact-style channels add the user as a contact; the rest are follows."""
    return _T["add_contact"] if channel in ("wecom", "community_group", "offline_store") else _T["follow"]


def _exit_type(channel: str) -> int:
    """The explicit exit that matches how the user was connected."""
    if channel in ("wecom", "community_group", "offline_store"):
        return _T["delete_contact"]
    if channel in ("official_account", "douyin"):
        return _T["unfollow"]
    return _T["unsubscribe"]


_ACQ_TYPE_BY_CHANNEL = np.array([_acquire_type(c) for c in CHANNELS], np.int8)


_EXIT_TYPE_BY_CHANNEL = np.array([_exit_type(c) for c in CHANNELS], np.int8)


_EXIT_CODES = np.array(sorted({_T["unfollow"], _T["delete_contact"], _T["unsubscribe"]}), np.int8)


def _type_table(promo: bool) -> npt.NDArray[np.float64]:
    """Per-(stage, segment) type probabilities, shape (stages * segments, types)."""
    table = np.zeros((_N_STAGES, _N_SEGMENTS, _N_TYPES))
    for s, weights in enumerate(_STAGE_TYPE_WEIGHTS):
        for name, w in weights.items():
            table[s, :, _T[name]] = w
    for name in ("order", "add_to_cart"):
        table[:, :, _T[name]] *= _SEGMENT_ORDER_MULT[None, :]
    if promo:
        for name, mult in _PROMO_TYPE_MULT.items():
            table[:, :, _T[name]] *= mult
    table /= table.sum(axis=2, keepdims=True)
    return table.reshape(_N_STAGES * _N_SEGMENTS, _N_TYPES)


def _flat_cdf(table: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Cumulative rows shifted by their row index, flattened: one ``searchsorted``
    then samples every row's categorical at once (see :func:`_sample_rows`).
    """
    cdf = np.cumsum(table, axis=1)
    cdf[:, -1] = 1.0  # guard against rounding: u < 1 always lands in the row
    return (cdf + np.arange(table.shape[0])[:, None]).ravel()


def _sample_rows(
    rng: np.random.Generator, row: npt.NDArray[np.integer], flat_cdf: npt.NDArray[np.float64], width: int
) -> npt.NDArray[np.int8]:
    """Sample one category per element from the categorical of its ``row``.

    Vectorised inverse CDF over many categoricals at once: ``row + u`` falls in
    row ``row``'s band of the shifted, flattened CDF.
    """
    u = rng.random(row.shape[0])
    pos = np.searchsorted(flat_cdf, row + u, side="right")
    return (pos - row.astype(np.int64) * width).astype(np.int8)


_TYPE_CDF = (_flat_cdf(_type_table(False)), _flat_cdf(_type_table(True)))


_P_ORDER = (_type_table(False)[:, _T["order"]], _type_table(True)[:, _T["order"]])


_HOUR_CDF = np.cumsum(_HOUR_WEIGHTS / _HOUR_WEIGHTS.sum())


_ACQ_CH_P = np.array([_ACQ_CHANNEL_WEIGHTS.get(c, 0.0) for c in CHANNELS])
