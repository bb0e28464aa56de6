import dataclasses

import numpy as np

from pipelines.core.dedup import Deduplicator
from pipelines.core.features import compute_features
from pipelines.core.shard import ShardConfig, ShardProcessor
from tests.support.events import T0, columns

D = 86_400_000
S = 1000


def _with_keys(ev, keys):  # type: ignore[no-untyped-def]
    return dataclasses.replace(ev, event_key=np.asarray(keys, np.int64))


def test_duplicate_event_ids_do_not_change_features() -> None:
    rows = [("a", T0, "order", 20.0), ("a", T0 + 60 * S, "page_view"), ("b", T0, "coupon_claim")]
    clean = ShardProcessor(ShardConfig())
    clean.process(_with_keys(columns(rows), [1, 2, 3]))
    dup = ShardProcessor(ShardConfig())
    r1 = dup.process(_with_keys(columns(rows + rows[:1]), [1, 2, 3, 1]))  # retry inside the batch
    r2 = dup.process(_with_keys(columns(rows[:2]), [1, 2]))  # retries in a later batch
    assert (r1.duplicates, r2.duplicates) == (1, 2)
    assert (r1.applied, r2.applied) == (3, 0)
    now = T0 + D
    for st in (clean.state, dup.state):
        assert st.n == 2
    np.testing.assert_array_equal(
        compute_features(clean.state, np.arange(2), now), compute_features(dup.state, np.arange(2), now)
    )


def test_dedup_memory_is_bounded_by_two_generations_of_max_keys() -> None:
    d = Deduplicator(window_ms=3_600_000, max_keys=1000)
    for i in range(50):
        keys = np.arange(i * 400, (i + 1) * 400, dtype=np.int64)
        assert d.first_seen(keys, np.full(400, T0 + i * 60_000, np.int64)).all()
        assert d.remembered() <= 2 * 1000
    # the newest keys are still recognised
    assert not d.first_seen(np.arange(49 * 400, 50 * 400, dtype=np.int64), np.full(400, T0, np.int64)).any()


def test_dedup_snapshot_restores_the_remembered_keys() -> None:
    d = Deduplicator(window_ms=3_600_000)
    d.first_seen(np.array([5, 6, 7], np.int64), np.array([T0, T0, T0], np.int64))
    r = Deduplicator.restore(d.snapshot())
    assert r.first_seen(np.array([6, 8], np.int64), np.array([T0, T0], np.int64)).tolist() == [False, True]


def test_a_changed_user_is_scored_at_most_once_per_interval_and_flushed_provisionally_at_the_end() -> None:
    proc = ShardProcessor(ShardConfig(score_interval_ms=60 * S))
    scored = 0
    for i in range(30):  # a burst: one event every 5 s for 150 s
        res = proc.process(columns([("a", T0 + i * 5 * S, "live_watch")]))
        scored += 0 if res.rows is None else len(res.rows)
    assert scored == 3  # at 0 s, 60 s, 120 s
    assert proc.pending.tolist() == [0]
    final = proc.flush()
    assert final.rows is not None and list(final.rows.user_id) == ["a"]
    assert final.rows.version == T0 + 145 * S
    # provisional: the flush leaves the state as it was (the user is still pending, its score time
    # not advanced), so a run resumed after a graceful stop scores it as an uninterrupted run would
    assert final.rows.provisional is not None and final.rows.provisional.tolist() == [True]
    assert proc.pending.tolist() == [0] and int(proc.state.scored_ms[0]) == T0 + 120 * S
    again = proc.flush()
    assert again.rows is not None and again.rows.version == final.rows.version
    np.testing.assert_array_equal(again.rows.features, final.rows.features)


def test_a_stage_change_is_emitted_at_once_whatever_the_cadence() -> None:
    proc = ShardProcessor(ShardConfig(score_interval_ms=3600 * S))
    proc.process(columns([("a", T0, "page_view")]))
    res = proc.process(columns([("a", T0 + 10 * S, "unfollow")]))  # churned, 10 s later
    assert res.rows is not None and res.rows.stage.tolist() == [4]


def test_only_rows_changed_by_their_own_events_count_toward_freshness() -> None:
    proc = ShardProcessor(ShardConfig(score_interval_ms=0))
    proc.process(columns([("silent", T0, "page_view"), ("busy", T0, "page_view")]))
    res = proc.process(columns([("busy", T0 + 20 * D, "page_view")]))  # silent turns dormant by timer
    assert res.rows is not None
    by_user = dict(zip(res.rows.user_id.tolist(), res.rows.from_events.tolist(), strict=True))
    assert by_user == {"busy": True, "silent": False}
