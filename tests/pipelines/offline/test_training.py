"""Training sets and holdouts: labels from the right window, nothing from after --as-of."""

import numpy as np
import pytest

from pipelines.contract.events import EventColumns
from pipelines.core.features import INDEX
from pipelines.offline.training import build_holdout, build_training_set
from tests.support.events import DAY_MS, T0, columns

H = 7
AS_OF = T0 + 40 * DAY_MS


def _history(last_day_of_a: int = 47) -> list[tuple]:
    rows: list[tuple] = []
    rows += [("a", T0 + d * DAY_MS, "page_view") for d in range(last_day_of_a + 1)]  # active every day
    rows += [("b", T0 + d * DAY_MS + 1, "page_view") for d in range(21)]  # silent after day 20
    rows += [("c", T0 + 2, "page_view"), ("c", T0 + 30 * DAY_MS, "order", 50.0)]
    rows += [("d", T0 + 30 * DAY_MS + 5, "register"), ("d", T0 + 42 * DAY_MS, "message_read")]
    return rows


def _ev(rows: list[tuple]) -> EventColumns:
    return columns(sorted(rows, key=lambda r: r[1]))


def _by_user(ts, origin: int) -> dict[str, np.ndarray]:
    keys = {u: columns([(u, T0, "page_view")]).user_key[0] for u in "abcd"}
    sel = ts.origin == origin
    return {u: ts.y[sel][ts.user_key[sel] == k][0] for u, k in keys.items() if (ts.user_key[sel] == k).any()}


def test_every_training_label_is_observable_at_as_of() -> None:
    ts = build_training_set(_ev(_history()), as_of_ms=AS_OF, horizon_days=H, origins=3)
    assert ts.origins_ms == (AS_OF - 3 * H * DAY_MS, AS_OF - 2 * H * DAY_MS, AS_OF - H * DAY_MS)
    assert all(t + H * DAY_MS <= AS_OF for t in ts.origins_ms)
    assert ts.x.shape[0] == ts.y.shape[0] == ts.user_key.shape[0] == ts.origin.shape[0]


def test_labels_come_from_the_horizon_after_each_origin() -> None:
    ts = build_training_set(_ev(_history()), as_of_ms=AS_OF, horizon_days=H, origins=3)
    # origins at days 19, 26, 33; labels (churned, ordered) from the following 7 days
    o19, o26, o33 = (_by_user(ts, i) for i in range(3))
    assert o19["a"].tolist() == [0, 0] and o26["a"].tolist() == [0, 0]
    assert o19["b"].tolist() == [0, 0]  # active on day 20
    assert o26["b"].tolist() == [1, 0] and o33["b"].tolist() == [1, 0]
    assert o19["c"].tolist() == [1, 0]
    assert o26["c"].tolist() == [0, 1]  # the order on day 30 is activity and a purchase
    assert "d" not in o26 and o33["d"].tolist() == [1, 0]  # first seen on day 30; next event on day 42


def test_events_after_as_of_change_neither_features_nor_labels() -> None:
    base = _history()
    future = [("a", AS_OF + 1, "order", 99.0), ("e", AS_OF + DAY_MS, "register"), ("b", AS_OF + 2, "page_view")]
    # ... and an event after as-of that is changed (a different type and amount)
    changed = [r if r != ("a", T0 + 45 * DAY_MS, "page_view") else ("a", r[1], "order", 10.0) for r in base]
    ref = build_training_set(_ev(base), as_of_ms=AS_OF, horizon_days=H, origins=3)
    for rows in (base + future, changed):
        ts = build_training_set(_ev(rows), as_of_ms=AS_OF, horizon_days=H, origins=3)
        np.testing.assert_array_equal(ts.x, ref.x)
        np.testing.assert_array_equal(ts.y, ref.y)
        np.testing.assert_array_equal(ts.x_as_of, ref.x_as_of)
        assert ts.fingerprint == ref.fingerprint and ts.n_events == ref.n_events


def test_training_needs_history_before_the_first_origin() -> None:
    with pytest.raises(ValueError, match="history too short"):
        build_training_set(_ev(_history()), as_of_ms=T0 + 10 * DAY_MS, horizon_days=H, origins=3)


def test_holdout_reads_features_up_to_the_origin_and_labels_after_it() -> None:
    ho = build_holdout(_ev(_history()), origin_ms=AS_OF, horizon_days=H)
    users = ho.user_id.tolist()
    assert sorted(users) == ["a", "b", "c", "d"]
    y = dict(zip(users, ho.y.tolist(), strict=True))
    assert y == {"a": [0, 0], "b": [1, 0], "c": [1, 0], "d": [0, 0]}
    # features are as of the origin: b's last activity was on day 20
    assert ho.x[users.index("b"), INDEX["days_since_active"]] == pytest.approx(20.0, abs=1e-3)
    # the prior window (origin - H, origin] labels what a baseline may be fitted on
    assert ho.prior_x.shape[0] == ho.prior_y.shape[0] == 4  # all four users were seen by day 33
    prior_y = dict(zip(users[:4], ho.prior_y.tolist(), strict=True))
    assert prior_y == {"a": [0, 0], "b": [1, 0], "c": [1, 0], "d": [1, 0]}
    assert ho.events_in_window == sum(1 for r in _history() if AS_OF < r[1] <= AS_OF + H * DAY_MS)


def test_holdout_summaries_are_the_bgnbd_inputs() -> None:
    ho = build_holdout(_ev(_history()), origin_ms=AS_OF, horizon_days=H)
    users = ho.user_id.tolist()
    b, c = users.index("b"), users.index("c")
    # b: active on 21 distinct days, days 0..20, observed for 40 days since the first
    assert (ho.activity.x[b], ho.activity.t_x[b], ho.activity.big_t[b]) == (20, 20, 40)
    # c: one order 30 days after the first event, observed for 40 days
    assert ho.orders.x[c] == 1
    assert ho.orders.t_x[c] == pytest.approx(30.0, abs=1e-6) and ho.orders.big_t[c] == pytest.approx(40.0, abs=1e-6)
    assert ho.orders.x[b] == 0 and ho.orders.t_x[b] == 0


def test_holdout_refuses_events_that_do_not_cover_the_horizon() -> None:
    with pytest.raises(ValueError, match="whole horizon"):
        build_holdout(_ev(_history(last_day_of_a=42)), origin_ms=AS_OF, horizon_days=H)
