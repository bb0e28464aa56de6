"""Memory bounds of shard state: the new-user rate guard and the eviction of long-churned users (issue 19, 9).

Before them every id ever seen kept a row forever: a flood of random ids grew state (and every
snapshot) until the process died. The attack is first in each test; the bound follows.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.contract.decode import decode_batch
from pipelines.contract.events import EventColumns, RawBatch, RejectReason
from pipelines.contract.time import DAY_MS
from pipelines.core.retention import MemoryBounds
from pipelines.core.shard import ShardConfig, ShardProcessor, ShardResult

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def lines(events: list[tuple[str, int, str]], start: int = 0) -> list[bytes]:
    """NDJSON events ``(user_id, ts_ms, type)``; event ids from the position (unique per call's ``start``)."""
    tmpl = b'{"event_id":"e%d","user_id":"%s","ts":%d,"type":"%s","channel":"app"}'
    return [tmpl % (start + i, u.encode(), ts, t.encode()) for i, (u, ts, t) in enumerate(events)]


def decode(payloads: list[bytes], first_offset: int = 0) -> EventColumns:
    raw = RawBatch("mem", 0, np.arange(first_offset, first_offset + len(payloads), dtype=np.int64), payloads)
    d = decode_batch(raw, now_ms=T0 + 400 * DAY_MS)
    assert not d.rejects
    return d.events


def flood(seconds: int, per_second: int, *, t0: int = T0) -> list[bytes]:
    """``per_second`` new ids in every second of event time (a random-id flood), in time order."""
    ev = [(f"x{s}-{i}", t0 + s * 1000 + i % 1000, "page_view") for s in range(seconds) for i in range(per_second)]
    return lines(ev)


def guarded(limit: int, *, retention_days: float = 0, tick_ms: int = 1000) -> ShardConfig:
    return ShardConfig(
        score_interval_ms=tick_ms,
        timer_bucket_ms=tick_ms,
        memory=MemoryBounds(max_new_users_per_second=limit, churned_retention_ms=int(retention_days * DAY_MS)),
    )


def run_cuts(cfg: ShardConfig, payloads: list[bytes], cuts: list[int]) -> tuple[ShardProcessor, list[ShardResult]]:
    proc = ShardProcessor(cfg)
    out, a, k = [], 0, 0
    while a < len(payloads):
        b = min(len(payloads), a + cuts[k % len(cuts)])
        out.append(proc.process(decode(payloads[a:b], a)))
        a, k = b, k + 1
    out.append(proc.flush())
    return proc, out


def rejected(results: list[ShardResult], reason: RejectReason) -> list[int]:
    return sorted(r.offset for res in results for r in res.rejects if r.reason == reason)


def test_without_the_guard_every_id_of_a_flood_takes_a_row() -> None:
    proc, _ = run_cuts(ShardConfig(score_interval_ms=1000, timer_bucket_ms=1000), flood(3, 2000), [1000])
    assert proc.state.users == 6000  # the attack: state grows with every id


def test_a_flood_of_new_ids_admits_the_rate_per_event_second_and_dead_letters_the_rest() -> None:
    # a regular user, known from a second before the flood, goes on during it
    known = lines([("regular", T0 + s * 1000 + 500, "page_view") for s in range(-2, 3)], start=10**6)
    proc, res = run_cuts(guarded(100), [*known[:1], *flood(3, 2000)], [1, 700])
    assert proc.state.users == 300 + 1  # 100 new users per second of event time, and the regular user
    assert len(rejected(res, RejectReason.NEW_USER_RATE)) == 3 * 2000 - 300
    detail = {r.detail for x in res for r in x.rejects}
    assert all("new users in one second of event time" in d for d in detail)
    # a known user's events are never refused, however hard the flood
    later, res2 = proc, [proc.process(decode(known[2:], 10**6))]
    assert not rejected(res2, RejectReason.NEW_USER_RATE)
    assert later.state.users == 301


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=5))
def test_who_the_guard_admits_does_not_depend_on_batch_cuts(cuts: list[int]) -> None:
    # two seconds of flood, shuffled within each second (producers interleave), and a few late stragglers
    rng = np.random.default_rng(5)
    payloads = flood(3, 300)
    order = np.concatenate([rng.permutation(300) + 300 * s for s in range(3)])
    payloads = [payloads[i] for i in order]
    ref_proc, ref = run_cuts(guarded(40), payloads, [len(payloads)])
    proc, got = run_cuts(guarded(40), payloads, cuts)
    assert rejected(got, RejectReason.NEW_USER_RATE) == rejected(ref, RejectReason.NEW_USER_RATE)
    n = proc.state.n
    assert sorted(proc.state.user_id[:n]) == sorted(ref_proc.state.user_id[: ref_proc.state.n])
    assert proc.state.users == 3 * 40


def test_the_guard_counts_survive_a_snapshot_and_restore() -> None:
    payloads = flood(1, 300)
    whole, ref = run_cuts(guarded(50, tick_ms=3_600_000), payloads, [300])
    proc = ShardProcessor(guarded(50, tick_ms=3_600_000))
    first = [proc.process(decode(payloads[:150]))]
    proc = ShardProcessor.restore(guarded(50, tick_ms=3_600_000), proc.snapshot())
    rest = [proc.process(decode(payloads[150:], 150)), proc.flush()]
    assert rejected(first + rest, RejectReason.NEW_USER_RATE) == rejected(ref, RejectReason.NEW_USER_RATE)
    assert proc.state.users == whole.state.users == 50


def _churn_then_keep_clock_moving(proc: ShardProcessor, users: int, days: int) -> list[ShardResult]:
    """``users`` users unfollow (churned at once) on day 0; one regular user is active every day after."""
    out = [proc.process(decode(lines([(f"c{i}", T0 + i, "unfollow") for i in range(users)])))]
    for d in range(1, days + 1):
        out.append(proc.process(decode(lines([("regular", T0 + d * DAY_MS, "page_view")], start=10**6 + d))))
    return out


def test_churned_users_silent_past_the_retention_are_evicted_and_their_rows_reused() -> None:
    keep = ShardProcessor(guarded(0, tick_ms=3_600_000))
    _churn_then_keep_clock_moving(keep, 500, 12)
    assert keep.state.users == 501  # the attack: without a retention, churned users stay forever

    proc = ShardProcessor(guarded(0, retention_days=10, tick_ms=3_600_000))
    res = _churn_then_keep_clock_moving(proc, 500, 12)
    assert sum(r.evicted for r in res) == 500
    assert proc.state.users == 1  # the regular user stays
    high_water = proc.state.n
    nbytes = proc.state.nbytes()
    # 500 newcomers take the freed rows: the state does not grow, nor does its snapshot
    t = T0 + 13 * DAY_MS
    proc.process(decode(lines([(f"n{i}", t + i, "page_view") for i in range(500)], start=2 * 10**6)))
    proc.flush()
    assert proc.state.users == 501
    assert proc.state.n == high_water
    assert proc.state.nbytes() == nbytes
    assert proc.snapshot()["state"]["n"] == high_water


def test_an_evicted_user_who_returns_starts_anew_and_is_not_mixed_with_a_reused_row() -> None:
    proc = ShardProcessor(guarded(0, retention_days=10, tick_ms=3_600_000))
    _churn_then_keep_clock_moving(proc, 3, 12)
    assert proc.state.users == 1
    t = T0 + 13 * DAY_MS
    proc.process(decode(lines([("newcomer", t, "page_view")], start=3 * 10**6)))  # takes c0's old row
    back = [("c1", t + 1, "coupon_claim"), ("regular", t + DAY_MS, "page_view")]
    res = proc.process(decode(lines(back, start=4 * 10**6)))
    rows = [r for r in res.rows if len(r)]
    c1 = [(int(fr.prev_stage[i]), fr.user_id[i]) for fr in rows for i in range(len(fr)) if fr.user_id[i] == "c1"]
    assert c1 and c1[0][0] == -1  # a first transition, from none: nothing of the old c1 was kept
    st = proc.state
    row = int(st.lookup(np.asarray([decode(lines([("c1", t, "coupon_claim")])).user_key[0]]))[0])
    assert st.user_id[row] == "c1" and st.coupon_claims[row] == 1
    assert sorted(st.user_id[: st.n]) == ["", "c1", "newcomer", "regular"]  # 4 rows ever, one still free


def test_eviction_survives_a_snapshot_and_the_restored_state_reuses_the_same_rows() -> None:
    proc = ShardProcessor(guarded(0, retention_days=10, tick_ms=3_600_000))
    _churn_then_keep_clock_moving(proc, 50, 12)
    snap = proc.snapshot()
    back = ShardProcessor.restore(guarded(0, retention_days=10, tick_ms=3_600_000), snap)
    assert back.state.users == 1 and back.state.n == proc.state.n
    t = T0 + 13 * DAY_MS
    more = lines([(f"n{i}", t + i, "page_view") for i in range(50)], start=5 * 10**6)
    for p in (proc, back):
        p.process(decode(more))
        p.flush()
    assert back.state.n == proc.state.n
    assert list(back.state.user_id[: back.state.n]) == list(proc.state.user_id[: proc.state.n])
