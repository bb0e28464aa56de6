import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.contract.events import TYPE_CODE
from pipelines.contract.time import DAY_MS, day_index
from pipelines.core.features import INDEX, compute_features
from pipelines.core.state import ACTIVE_CODE, FAMILIES, FAMILY_OF_CODE, HORIZON_DAYS, ShardState
from tests.support.events import T0, columns

TYPES = ["page_view", "order", "message_read", "coupon_claim", "coupon_redeem", "unfollow", "share"]

events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 80 * DAY_MS),
        st.sampled_from(TYPES),
        st.floats(0, 500, allow_nan=False),
    ),
    min_size=1,
    max_size=60,
)


def _reference(events: list[tuple[str, int, str, float]], user: str, now: int) -> dict[str, float]:
    """Brute force over the raw events of one user."""
    mine = [(t, ty, a) for u, t, ty, a in events if u == user]
    ref: dict[str, float] = {}
    for fam_i, fam in enumerate(FAMILIES):
        for h in HORIZON_DAYS:
            ref[f"{fam}_{h}d"] = sum(
                math.exp(-(now - t) / (h * DAY_MS)) for t, ty, _ in mine if FAMILY_OF_CODE[TYPE_CODE[ty]] == fam_i
            )
    active = [t for t, ty, _ in mine if ACTIVE_CODE[TYPE_CODE[ty]]]
    ref["days_since_active"] = min(365.0, (now - max(active)) / DAY_MS) if active else 365.0
    orders = [a for _, ty, a in mine if ty == "order"]
    ref["lifetime_orders"] = len(orders)
    ref["lifetime_value"] = sum(orders)
    now_day = int(day_index(np.array([now]))[0])
    days = {int(day_index(np.array([t]))[0]) for t in active}
    ref["active_days_7"] = sum(1 for d in days if now_day - 7 < d <= now_day)
    ref["active_days_30"] = sum(1 for d in days if now_day - 30 < d <= now_day)
    return ref


@settings(max_examples=60, deadline=None)
@given(events=events_strategy, seed=st.integers(0, 1000), chunk=st.integers(1, 10))
def test_windows_equal_brute_force_reference_in_any_arrival_order(
    events: list[tuple[str, int, str, float]], seed: int, chunk: int
) -> None:
    events = [(u, T0 + t, ty, round(a, 2)) for u, t, ty, a in events]
    order = np.random.default_rng(seed).permutation(len(events))
    shuffled = [events[i] for i in order]
    st_ = ShardState(capacity=2)
    for i in range(0, len(shuffled), chunk):
        st_.apply(columns(shuffled[i : i + chunk]))
    now = max(t for _, t, _, _ in events) + 3 * DAY_MS
    for user in {u for u, *_ in events}:
        row = st_.lookup(np.array([columns([(user, T0, "page_view")]).user_key[0]]))
        f = compute_features(st_, row, now)[0]
        for name, want in _reference(events, user, now).items():
            assert math.isclose(float(f[INDEX[name]]), want, rel_tol=2e-4, abs_tol=2e-4), (
                user,
                name,
                f[INDEX[name]],
                want,
            )


def test_snapshot_restore_gives_identical_features() -> None:
    st_ = ShardState(capacity=4)
    st_.apply(columns([("a", T0, "order", 10.0), ("b", T0 + DAY_MS, "page_view"), ("c", T0, "unfollow")]))
    restored = ShardState.restore(st_.snapshot_arrays())
    rows = np.arange(3)
    now = T0 + 5 * DAY_MS
    np.testing.assert_array_equal(compute_features(st_, rows, now), compute_features(restored, rows, now))
    # the restored index keeps working for new and known users
    restored.apply(columns([("a", T0 + 2 * DAY_MS, "order", 5.0), ("d", T0, "page_view")]))
    assert restored.n == 4
    row_a = restored.lookup(columns([("a", T0, "page_view")]).user_key)
    assert compute_features(restored, row_a, now)[0, INDEX["lifetime_orders"]] == 2


def test_state_grows_past_initial_capacity_without_losing_users() -> None:
    st_ = ShardState(capacity=2)
    st_.apply(columns([(f"u{i}", T0 + i, "order", 1.0) for i in range(1000)]))
    assert st_.n == 1000
    f = compute_features(st_, np.arange(1000), T0 + DAY_MS)
    assert (f[:, INDEX["lifetime_orders"]] == 1).all()
