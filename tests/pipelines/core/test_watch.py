"""The at-risk watch: a silent user's early warning is stored within one tick of it becoming true.

The probe here is a pure stand-in for the model (risk = 0.6 x days of silence / 6.5, so the
default taxonomy's 0.6 threshold is crossed after six and a half silent days, half a day away
from the daily refreshes that follow the user's last evaluation): what is under test is the
shard's scheduling, not the network.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pipelines.contract.time import DAY_MS
from pipelines.core.defaults import default_taxonomy
from pipelines.core.features import INDEX
from pipelines.core.shard import ShardConfig, ShardProcessor
from tests.support.events import T0, columns

HOUR = 3_600_000
TAXONOMY = default_taxonomy()  # at_risk: an active stage and churn_risk >= 0.6; dormant after 14 silent days


def silence_probe(features: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    risk = np.clip(features[:, INDEX["days_since_active"]] * 0.6 / 6.5, 0.0, 1.0).astype(np.float32)
    return risk, np.zeros_like(risk)


def _evaluations(probe: object, days: int = 10) -> list[tuple[int, bool]]:
    """(tick, at-risk by the probe) of every evaluation of user "u", silent after two orders at T0."""
    proc = ShardProcessor(ShardConfig(taxonomy=TAXONOMY), probe=probe)  # type: ignore[arg-type]
    out: list[tuple[int, bool]] = []

    def take(res: object) -> None:
        for fr in res.rows:  # type: ignore[attr-defined]
            hit = fr.user_id == "u"
            if hit.any():
                churn, prop = silence_probe(fr.features[hit])
                flag = TAXONOMY.at_risk(fr.features[hit], fr.stage[hit], churn, prop)
                out.append((int(fr.version), bool(flag[0])))

    take(proc.process(columns([("u", T0, "order", 50.0), ("u", T0 + 1, "order", 40.0)])))
    for hour in range(1, days * 24):  # another user's events move the clock hour by hour
        take(proc.process(columns([("clock", T0 + hour * HOUR, "page_view")])))
    return out


def _first_flagged(evals: list[tuple[int, bool]]) -> int:
    return next(t for t, flag in evals if flag)


def test_an_early_warning_is_stored_within_one_tick_of_becoming_true() -> None:
    evals = _evaluations(silence_probe)
    crossing = T0 + 6 * DAY_MS + DAY_MS // 2  # days_since_active reaches 6.5: risk 0.6
    assert crossing <= _first_flagged(evals) <= crossing + HOUR


def test_without_the_watch_the_daily_refresh_alone_can_lag_by_most_of_a_day() -> None:
    watched, daily = _evaluations(silence_probe), _evaluations(None)
    crossing = T0 + 6 * DAY_MS + DAY_MS // 2
    assert _first_flagged(daily) - crossing > 10 * HOUR  # the next daily refresh is half a day later
    # the watch costs only the ticks around the crossing: a day's hourly evaluations at most
    assert len(watched) - len(daily) <= 24


def test_the_watch_leaves_a_user_to_the_rule_timer_when_their_stage_changes_first() -> None:
    # risk reaches 0.6 only after 15.6 silent days, when the user is already dormant (not an active stage):
    # the flag would flip within a day of the day-14 refresh, but with the stage, so no hourly evaluations
    def slow(features: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        risk, prop = silence_probe(features)
        return risk * 6.5 / 15.6, prop

    assert len(_evaluations(slow, days=16)) == len(_evaluations(None, days=16))
