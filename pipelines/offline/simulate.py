"""Deterministic, vectorised simulator of private-domain users moving through the lifecycle.

Why it exists: the scoring pipeline, its benchmarks and its models need realistic
event streams *with ground truth* (the latent lifecycle stage, and what each user
really did in the following weeks), which production data never gives us. The
simulator produces both from one seed, byte for byte reproducibly, so tests and
benchmarks can compare runs and a model's labels can be checked against the truth.

Model, kept deliberately simple but plausible:

* Each user has an acquisition day (existing users were acquired before the window
  and never emit ``register``; new users arrive uniformly during the window and
  emit ``register`` plus ``follow`` / ``add_contact``), an acquisition channel and
  a latent value segment (vip / regular / potential) that scales order rates and
  order amounts.
* A daily latent stage Markov chain ``new -> growing -> mature``, any active stage
  ``-> dormant -> churned``, and win-back ``dormant/churned -> growing`` that is
  more likely on promotion days. About 40 % of the users entering ``churned`` cut
  the connection explicitly (``unfollow`` / ``delete_contact`` / ``unsubscribe``);
  they never come back and emit nothing afterwards.
* Events per user-day are Poisson with a per-stage rate (times segment, per-user
  activity and promotion multipliers); the type of each event comes from a
  per-(stage, segment) categorical. Coupon claims are sometimes redeemed later,
  orders are sometimes (partly) refunded later.
* Timestamps follow a daily cycle in UTC+8 peaking at lunch and 20:00-22:00.

Ground-truth labels (``inactive_next_h``, ``ordered_next_h``) come from running the
same dynamics for ``horizon_days`` more days. Those days are never materialised as
events: only per-user counts are drawn (Poisson thinning gives the order counts),
which halves the cost of a run.

Everything is vectorised over users/events with numpy; the only Python loop is
over days. Strings and NDJSON are built by polars, chunk-wise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import polars as pl

from pipelines.contract.events import CHANNELS, EVENT_TYPES
from pipelines.contract.time import DAY_MS, HOUR_MS, day_start_ms
from pipelines.offline.sim_params import (
    _ACQ_CH_P,
    _ACQ_TYPE_BY_CHANNEL,
    _ACTIVITY_SHAPE,
    _AMOUNT_MEDIAN,
    _AMOUNT_SIGMA,
    _EXISTING_STAGE_P,
    _EXIT_TYPE_BY_CHANNEL,
    _EXPLICIT_EXIT_P,
    _HOME_CHANNEL_P,
    _HOUR_CDF,
    _N_SEGMENTS,
    _N_TYPES,
    _P_DORMANT_TO_CHURNED,
    _P_GROWING_TO_DORMANT,
    _P_GROWING_TO_MATURE,
    _P_MATURE_TO_DORMANT,
    _P_NEW_TO_DORMANT,
    _P_NEW_TO_GROWING,
    _P_ORDER,
    _P_REACTIVATE_CHURNED,
    _P_REACTIVATE_DORMANT,
    _PROMO_RATE_MULT,
    _REDEEM_DELAY_MAX_MS,
    _REDEEM_DELAY_MEAN_MS,
    _REDEEM_P,
    _REFUND_DELAY_MS,
    _REFUND_FULL_P,
    _REFUND_P,
    _SEGMENT_DORMANCY_MULT,
    _SEGMENT_P,
    _SEGMENT_RATE,
    _STAGE_RATE,
    _T,
    _TYPE_CDF,
    _UNACQUIRED,
    SEGMENTS,
    STAGES,
    _sample_rows,
)

__all__ = [
    "SEGMENTS",
    "STAGES",
    "SimConfig",
    "SimResult",
    "simulate",
]

# --------------------------------------------------------------------------- vocabulary


_NEW, _GROWING, _MATURE, _DORMANT, _CHURNED = range(5)


# --------------------------------------------------------------------------- parameters
# Plain module constants rather than config: they define "plausible", the config
# only sizes and seeds a run. Tuning them changes every seed's output.


# fmt: on


_HOUR_CDF[-1] = 1.0
_ACQ_CH_P /= _ACQ_CH_P.sum()


# --------------------------------------------------------------------------- config / result


def _default_promo(days: int) -> tuple[int, ...]:
    return (days * 2 // 3,) if days >= 7 else ()


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Size, seed and calendar of one simulation run.

    ``promo_days`` are day indexes from ``start`` (0-based; indexes in the horizon,
    ``days <= i < days + horizon_days``, are allowed and affect the labels only).
    Left empty, one promotion day about two thirds through the window is picked when
    ``days >= 7``, because a window without a traffic spike hides bugs in
    burst handling.
    """

    users: int = 50_000
    days: int = 30
    start: dt.date = dt.date(2026, 10, 1)
    seed: int = 7
    horizon_days: int = 30
    promo_days: tuple[int, ...] = ()
    existing_fraction: float = 0.6

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if self.horizon_days < 0:
            raise ValueError(f"horizon_days must be >= 0, got {self.horizon_days}")
        if not 0.0 <= self.existing_fraction <= 1.0:
            raise ValueError(f"existing_fraction must be in [0, 1], got {self.existing_fraction}")
        total = self.days + self.horizon_days
        bad = [d for d in self.promo_days if not 0 <= d < total]
        if bad:
            raise ValueError(f"promo_days {bad} outside [0, {total})")

    @property
    def effective_promo_days(self) -> tuple[int, ...]:
        """The promotion days actually simulated (the default applied)."""
        return tuple(sorted(set(self.promo_days))) if self.promo_days else _default_promo(self.days)

    @property
    def start_ms(self) -> int:
        """Epoch ms of UTC+8 midnight on ``start``: the window's first instant."""
        return day_start_ms(self.start)

    @property
    def end_ms(self) -> int:
        """Epoch ms of the end of the window (exclusive): ``start + days`` at UTC+8 midnight."""
        return self.start_ms + self.days * DAY_MS


@dataclass(frozen=True)
class SimResult:
    """Events of the window plus per-user ground truth.

    ``events``: columns event_id, user_id, ts (Int64 epoch ms), type, channel,
    amount (Float64, null unless order/refund), sorted by ts, all in
    ``[start_ms, end_ms)``.
    ``truth``: one row per user with at least one event in the window: user_id,
    latent_stage (at the end of the window), acquisition_channel,
    inactive_next_h, ordered_next_h, value_segment; sorted by user_id.
    """

    events: pl.DataFrame
    truth: pl.DataFrame
    end_ms: int


# --------------------------------------------------------------------------- simulation


@dataclass
class _EventBuf:
    """Per-day event chunks in generation order, concatenated once at the end."""

    user: list[npt.NDArray[np.int32]] = field(default_factory=list)
    ts: list[npt.NDArray[np.int64]] = field(default_factory=list)
    type: list[npt.NDArray[np.int8]] = field(default_factory=list)
    channel: list[npt.NDArray[np.int8]] = field(default_factory=list)
    amount: list[npt.NDArray[np.float64]] = field(default_factory=list)

    def add(
        self,
        user: npt.NDArray[np.integer],
        ts: npt.NDArray[np.int64],
        type_: npt.NDArray[np.int8],
        channel: npt.NDArray[np.int8],
        amount: npt.NDArray[np.float64] | None = None,
    ) -> None:
        if user.shape[0] == 0:
            return
        self.user.append(user.astype(np.int32, copy=False))
        self.ts.append(ts)
        self.type.append(type_)
        self.channel.append(channel)
        self.amount.append(np.full(user.shape[0], np.nan) if amount is None else amount)


class _Sim:
    """State of one run: per-user latent arrays and the random generator."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.promo = frozenset(cfg.effective_promo_days)
        self.start_ms = cfg.start_ms
        self.end_ms = cfg.end_ms
        n = cfg.users
        rng = self.rng
        # Static latent attributes.
        self.channel = rng.choice(len(CHANNELS), size=n, p=_ACQ_CH_P).astype(np.int8)
        self.segment = rng.choice(_N_SEGMENTS, size=n, p=_SEGMENT_P).astype(np.int8)
        self.activity = rng.gamma(_ACTIVITY_SHAPE, 1.0 / _ACTIVITY_SHAPE, size=n)
        # Higher activity -> lower dormancy hazard (engaged users stick around).
        self.dormancy_mult = _SEGMENT_DORMANCY_MULT[self.segment] / np.sqrt(np.clip(self.activity, 0.25, 4.0))
        existing = rng.random(n) < cfg.existing_fraction
        # Existing users: acquired "before the window" (day -1); new users: uniform in the window.
        self.acq_day = np.where(existing, -1, rng.integers(0, cfg.days, size=n)).astype(np.int32)
        self.stage = np.full(n, _UNACQUIRED, np.int8)
        self.stage[existing] = rng.choice([_GROWING, _MATURE, _DORMANT], size=int(existing.sum()), p=_EXISTING_STAGE_P)
        self.exited = np.zeros(n, bool)
        self.exit_ts = np.full(n, np.iinfo(np.int64).max, np.int64)
        self.onboard_ts = np.zeros(n, np.int64)  # follow/add_contact time of new users
        # Horizon labels.
        self.h_any = np.zeros(n, bool)
        self.h_order = np.zeros(n, bool)

    # ---- dynamics

    def transition(self, day: int) -> npt.NDArray[np.int64]:
        """Advance every acquired user's stage by one day; return the users who
        entered ``churned`` today (candidates for an explicit exit event).
        """
        rng = self.rng
        promo = day in self.promo
        st = self.stage
        idx = np.flatnonzero((st >= 0) & ~self.exited)
        s = st[idx]
        u = rng.random(idx.shape[0])
        dm = self.dormancy_mult[idx]
        new = s.copy()

        m = s == _NEW
        p_dorm = _P_NEW_TO_DORMANT * dm
        new[m & (u < _P_NEW_TO_GROWING)] = _GROWING
        new[m & (u >= _P_NEW_TO_GROWING) & (u < _P_NEW_TO_GROWING + p_dorm)] = _DORMANT

        m = s == _GROWING
        p_dorm = _P_GROWING_TO_DORMANT * dm
        new[m & (u < _P_GROWING_TO_MATURE)] = _MATURE
        new[m & (u >= _P_GROWING_TO_MATURE) & (u < _P_GROWING_TO_MATURE + p_dorm)] = _DORMANT

        m = s == _MATURE
        new[m & (u < _P_MATURE_TO_DORMANT * dm)] = _DORMANT

        m = s == _DORMANT
        p_re = _P_REACTIVATE_DORMANT[promo]
        new[m & (u < p_re)] = _GROWING
        new[m & (u >= p_re) & (u < p_re + _P_DORMANT_TO_CHURNED)] = _CHURNED

        m = s == _CHURNED
        new[m & (u < _P_REACTIVATE_CHURNED[promo])] = _GROWING

        st[idx] = new
        churned_now: npt.NDArray[np.int64] = idx[(new == _CHURNED) & (s != _CHURNED)]
        return churned_now

    def exits(
        self, day: int, churned_now: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Pick the explicit leavers among today's churners; timestamp and mark them."""
        leave = churned_now[self.rng.random(churned_now.shape[0]) < _EXPLICIT_EXIT_P]
        ts = self.times(day, leave.shape[0])
        self.exited[leave] = True
        self.exit_ts[leave] = ts
        return leave, ts

    def times(self, day: int, k: int) -> npt.NDArray[np.int64]:
        """``k`` timestamps on ``day`` following the daily cycle (UTC+8)."""
        hour = np.searchsorted(_HOUR_CDF, self.rng.random(k), side="right").astype(np.int64)
        return self.start_ms + day * DAY_MS + hour * HOUR_MS + self.rng.integers(0, HOUR_MS, size=k)

    def counts(self, day: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Active users today and their Poisson event counts."""
        active = np.flatnonzero((self.stage >= _NEW) & (self.stage < _CHURNED))
        rate = _STAGE_RATE[self.stage[active]] * _SEGMENT_RATE[self.segment[active]] * self.activity[active]
        if day in self.promo:
            rate *= _PROMO_RATE_MULT
        return active, self.rng.poisson(rate)

    def row_key(self, users: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
        """Row of the (stage, segment) type table for each user."""
        key: npt.NDArray[np.int64] = self.stage[users].astype(np.int64) * _N_SEGMENTS + self.segment[users]
        return key

    # ---- one window day, materialised

    def window_day(self, day: int, buf: _EventBuf) -> None:
        """Simulate one window day and append its events (and their follow-ups) to ``buf``."""
        rng = self.rng
        promo = day in self.promo
        day_start = self.start_ms + day * DAY_MS
        day_end = day_start + DAY_MS

        if day > 0:
            leave, ts = self.exits(day, self.transition(day))
            ch = self.channel[leave]
            buf.add(leave, ts, _EXIT_TYPE_BY_CHANNEL[ch], ch)

        # Acquisition: register, then follow/add_contact within two minutes, both
        # early enough that the whole onboarding stays on the acquisition day.
        acq = np.flatnonzero(self.acq_day == day)
        self.stage[acq] = _NEW
        squeeze = DAY_MS - 5 * 60_000  # keep the daily cycle, end 5 min before midnight
        reg_ts = day_start + (self.times(day, acq.shape[0]) - day_start) * squeeze // DAY_MS
        follow_ts = reg_ts + rng.integers(1_000, 120_000, size=acq.shape[0])
        self.onboard_ts[acq] = follow_ts
        ch = self.channel[acq]
        buf.add(acq, reg_ts, np.full(acq.shape[0], _T["register"], np.int8), ch)
        buf.add(acq, follow_ts, _ACQ_TYPE_BY_CHANNEL[ch], ch)

        # Ordinary activity.
        active, n_ev = self.counts(day)
        users = np.repeat(active, n_ev)
        k = users.shape[0]
        types = _sample_rows(rng, self.row_key(users), _TYPE_CDF[promo], _N_TYPES)
        ts = self.times(day, k)
        # On the acquisition day everything happens after the onboarding.
        fresh = self.acq_day[users] == day
        if fresh.any():
            r = self.onboard_ts[users[fresh]]
            ts[fresh] = r + 1 + (rng.random(int(fresh.sum())) * (day_end - r - 1)).astype(np.int64)
        home = rng.random(k) < _HOME_CHANNEL_P
        chans = np.where(home, self.channel[users], rng.choice(len(CHANNELS), size=k, p=_ACQ_CH_P)).astype(np.int8)
        amount = np.full(k, np.nan)
        is_order = types == _T["order"]
        n_orders = int(is_order.sum())
        seg = self.segment[users[is_order]]
        amount[is_order] = np.round(rng.lognormal(np.log(_AMOUNT_MEDIAN[seg]), _AMOUNT_SIGMA), 2)
        buf.add(users, ts, types, chans, amount)

        # Follow-ups: coupon redemptions and refunds, possibly on later days.
        claim = np.flatnonzero(types == _T["coupon_claim"])
        claim = claim[rng.random(claim.shape[0]) < _REDEEM_P]
        delay = np.minimum(rng.exponential(_REDEEM_DELAY_MEAN_MS, claim.shape[0]), _REDEEM_DELAY_MAX_MS)
        buf.add(
            users[claim],
            ts[claim] + 60_000 + delay.astype(np.int64),
            np.full(claim.shape[0], _T["coupon_redeem"], np.int8),
            chans[claim],
        )
        order = np.flatnonzero(is_order)
        order = order[rng.random(n_orders) < _REFUND_P]
        k = order.shape[0]
        frac = np.where(rng.random(k) < _REFUND_FULL_P, 1.0, rng.uniform(0.1, 1.0, k))
        # floor, not round: a refund never exceeds its order.
        refund = np.floor(amount[order] * frac * 100.0 + 1e-6) / 100.0
        refund = np.minimum(refund, amount[order])
        buf.add(
            users[order],
            ts[order] + rng.integers(*_REFUND_DELAY_MS, size=k),
            np.full(k, _T["refund"], np.int8),
            chans[order],
            refund,
        )

    # ---- one horizon day, counts only

    def horizon_day(self, day: int) -> None:
        """Same dynamics as :meth:`window_day`, but only the labels are kept:
        did the user emit anything, and did they order (Poisson thinning).
        """
        leave, _ = self.exits(day, self.transition(day))
        self.h_any[leave] = True
        active, n_ev = self.counts(day)
        hit = n_ev > 0
        self.h_any[active[hit]] = True
        p_order = _P_ORDER[day in self.promo][self.row_key(active[hit])]
        ordered = self.rng.binomial(n_ev[hit], p_order) > 0
        self.h_order[active[hit][ordered]] = True


def _user_ids(n: int) -> pl.Series:
    """``u`` + zero-padded index (at least 7 digits), so ids sort like their index."""
    width = max(7, len(str(n - 1)))
    return pl.select(pl.lit("u") + pl.int_range(n, dtype=pl.Int64).cast(pl.String).str.zfill(width)).to_series()


def simulate(cfg: SimConfig) -> SimResult:
    """Run the simulation described in the module docstring. Same ``cfg``, same bytes."""
    sim = _Sim(cfg)
    buf = _EventBuf()
    for day in range(cfg.days):
        sim.window_day(day, buf)
    stage_at_end = sim.stage.copy()
    for day in range(cfg.days, cfg.days + cfg.horizon_days):
        sim.horizon_day(day)

    user = np.concatenate(buf.user) if buf.user else np.zeros(0, np.int32)
    ts = np.concatenate(buf.ts) if buf.ts else np.zeros(0, np.int64)
    typ = np.concatenate(buf.type) if buf.type else np.zeros(0, np.int8)
    chan = np.concatenate(buf.channel) if buf.channel else np.zeros(0, np.int8)
    amount = np.concatenate(buf.amount) if buf.amount else np.zeros(0, np.float64)

    # An explicit exit is final: drop follow-ups (refunds, redemptions) scheduled after it.
    keep = ts <= sim.exit_ts[user]
    in_window = keep & (ts < sim.end_ms)
    # Follow-ups that land in the horizon count for the labels.
    spill = keep & ~in_window & (ts < sim.end_ms + cfg.horizon_days * DAY_MS)
    sim.h_any[user[spill]] = True
    sim.h_order[user[spill & (typ == _T["order"])]] = True

    user, ts, typ, chan, amount = user[in_window], ts[in_window], typ[in_window], chan[in_window], amount[in_window]
    n_ev = ts.shape[0]
    id_width = max(9, len(str(max(n_ev - 1, 0))))
    uid = _user_ids(cfg.users)
    # One stable, multi-threaded sort (ties keep generation order, so a run is
    # reproducible on any machine), then all string columns in one parallel select.
    events = (
        pl.DataFrame(
            {
                "u": pl.Series(user, dtype=pl.Int32),
                "ts": pl.Series(ts, dtype=pl.Int64),
                "t": pl.Series(typ.astype(np.int32), dtype=pl.Int32),
                "c": pl.Series(chan.astype(np.int32), dtype=pl.Int32),
                "amount": pl.Series(amount, dtype=pl.Float64, nan_to_null=True),
            }
        )
        .sort("ts", maintain_order=True)
        .lazy()
        .select(
            (pl.lit("e") + (pl.int_range(pl.len(), dtype=pl.Int64) + 10**id_width).cast(pl.String).str.slice(1)).alias(
                "event_id"
            ),
            pl.lit(uid).gather(pl.col("u")).alias("user_id"),
            pl.col("ts"),
            pl.lit(pl.Series(EVENT_TYPES, dtype=pl.String)).gather(pl.col("t")).alias("type"),
            pl.lit(pl.Series(CHANNELS, dtype=pl.String)).gather(pl.col("c")).alias("channel"),
            pl.col("amount"),
        )
        .collect()
    )

    emitted = np.zeros(cfg.users, bool)
    emitted[user] = True
    who = np.flatnonzero(emitted)
    truth = pl.DataFrame(
        {
            "user_id": uid.gather(who),
            "latent_stage": pl.Series(STAGES, dtype=pl.String).gather(stage_at_end[who].astype(np.int32)),
            "acquisition_channel": pl.Series(CHANNELS, dtype=pl.String).gather(sim.channel[who].astype(np.int32)),
            "inactive_next_h": pl.Series(~sim.h_any[who], dtype=pl.Boolean),
            "ordered_next_h": pl.Series(sim.h_order[who], dtype=pl.Boolean),
            "value_segment": pl.Series(SEGMENTS, dtype=pl.String).gather(sim.segment[who].astype(np.int32)),
        }
    )
    return SimResult(events=events, truth=truth, end_ms=sim.end_ms)


# --------------------------------------------------------------------------- serialisation
