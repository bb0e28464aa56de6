"""Properties of the synthetic lifecycle simulator (pipelines.offline.simulate)."""

from __future__ import annotations

import datetime as dt
import gzip
import pathlib

import numpy as np
import polars as pl
import pytest

from pipelines.contract.decode import decode_batch
from pipelines.contract.events import CHANNELS, EVENT_TYPES, EXIT_TYPES, RawBatch
from pipelines.contract.time import DAY_MS
from pipelines.offline.simulate import SEGMENTS, STAGES, SimConfig, SimResult, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches, to_ndjson_bytes, write_jsonl, write_truth_csv

CFG = SimConfig(users=4_000, days=21, seed=3, horizon_days=14)
FAR_FUTURE_MS = 10**15


@pytest.fixture(scope="module")
def sim() -> SimResult:
    return simulate(CFG)


def _day_index(events: pl.DataFrame, cfg: SimConfig) -> pl.Series:
    return ((events["ts"] - cfg.start_ms) // DAY_MS).alias("day")


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_output(sim: SimResult) -> None:
    again = simulate(CFG)
    assert to_ndjson_bytes(again.events) == to_ndjson_bytes(sim.events)
    assert again.truth.equals(sim.truth)
    assert again.end_ms == sim.end_ms


def test_different_seed_gives_different_output(sim: SimResult) -> None:
    other = simulate(SimConfig(users=CFG.users, days=CFG.days, seed=CFG.seed + 1, horizon_days=CFG.horizon_days))
    assert to_ndjson_bytes(other.events) != to_ndjson_bytes(sim.events)


def test_horizon_does_not_change_the_window_events() -> None:
    # Labels come from extra days simulated *after* the window: the window itself is the same run.
    short = simulate(SimConfig(users=500, days=10, seed=5, horizon_days=0, promo_days=(3,)))
    long = simulate(SimConfig(users=500, days=10, seed=5, horizon_days=20, promo_days=(3,)))
    assert short.events.equals(long.events)
    assert short.truth["inactive_next_h"].all()  # nothing can happen in an empty horizon
    assert not short.truth["ordered_next_h"].any()


# --------------------------------------------------------------------------- wire format


def test_events_decode_without_rejects(sim: SimResult) -> None:
    total = 0
    decoded_types: list[np.ndarray] = []
    decoded_amounts: list[np.ndarray] = []
    for i, payloads in enumerate(iter_ndjson_batches(sim.events, 1_000)):
        raw = RawBatch("sim", 0, np.arange(total, total + len(payloads), dtype=np.int64), payloads)
        out = decode_batch(raw, now_ms=FAR_FUTURE_MS)
        assert out.rejects == [], f"batch {i}: {out.rejects[:3]}"
        assert len(out.events) == len(payloads)
        decoded_types.append(out.events.type_code)
        decoded_amounts.append(out.events.amount)
        total += len(payloads)
    assert total == sim.events.height
    types = np.concatenate(decoded_types)
    expected = np.asarray([EVENT_TYPES.index(t) for t in sim.events["type"].to_list()])
    np.testing.assert_array_equal(types, expected)
    np.testing.assert_array_equal(np.concatenate(decoded_amounts), sim.events["amount"].fill_null(0.0).to_numpy())


def test_ndjson_keys_follow_the_contract_order(sim: SimResult) -> None:
    first = to_ndjson_bytes(sim.events.head(1)).decode()
    keys = ["event_id", "user_id", "ts", "type", "channel", "amount"]
    positions = [first.index(f'"{k}":') for k in keys]
    assert positions == sorted(positions)
    assert first.endswith("\n") and first.count("\n") == 1


def test_batches_are_bounded_and_concatenate_to_the_ndjson(sim: SimResult) -> None:
    head = sim.events.head(2_345)
    batches = list(iter_ndjson_batches(head, 100))
    assert all(0 < len(b) <= 100 for b in batches)
    assert [len(b) for b in batches[:-1]] == [100] * (len(batches) - 1)
    lines = [line for b in batches for line in b]
    assert all(not line.endswith(b"\n") for line in lines)
    assert b"\n".join(lines) + b"\n" == to_ndjson_bytes(head)
    with pytest.raises(ValueError):
        next(iter_ndjson_batches(head, 0))


def test_gzip_round_trip(sim: SimResult, tmp_path: pathlib.Path) -> None:
    gz = tmp_path / "out" / "events.jsonl.gz"
    plain = tmp_path / "events.jsonl"
    assert write_jsonl(sim.events, gz) == sim.events.height
    assert write_jsonl(sim.events, plain) == sim.events.height
    expected = to_ndjson_bytes(sim.events)
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(gz.read_bytes()) == expected
    assert plain.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["events.jsonl", "events.jsonl.gz", "out"]  # no .part left
    back = pl.read_ndjson(plain, schema=dict(sim.events.schema))
    assert back.equals(sim.events)


def test_truth_csv_round_trip(sim: SimResult, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "truth.csv"
    write_truth_csv(sim.truth, path)
    back = pl.read_csv(path, schema=dict(sim.truth.schema))
    assert back.equals(sim.truth)


# --------------------------------------------------------------------------- shape of the stream


def test_events_are_sorted_by_ts_and_inside_window(sim: SimResult) -> None:
    ev = sim.events
    assert ev.schema == pl.Schema(
        {
            "event_id": pl.String,
            "user_id": pl.String,
            "ts": pl.Int64,
            "type": pl.String,
            "channel": pl.String,
            "amount": pl.Float64,
        }
    )
    ts = ev["ts"].to_numpy()
    assert (np.diff(ts) >= 0).all()
    start_ms = int(dt.datetime(2026, 10, 1, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp() * 1000)
    assert CFG.start_ms == start_ms
    assert sim.end_ms == start_ms + CFG.days * DAY_MS
    assert ts.min() >= start_ms and ts.max() < sim.end_ms
    # Every day of the window carries traffic.
    assert _day_index(ev, CFG).n_unique() == CFG.days


def test_ids_types_and_channels_are_valid(sim: SimResult) -> None:
    ev = sim.events
    assert ev["event_id"].n_unique() == ev.height
    assert ev["user_id"].str.contains(r"^u\d{7}$").all()
    assert set(ev["type"].unique()) <= set(EVENT_TYPES)
    assert set(ev["channel"].unique()) <= set(CHANNELS)


def test_amount_present_exactly_for_orders_and_refunds(sim: SimResult) -> None:
    ev = sim.events
    monetary = ev["type"].is_in(["order", "refund"])
    assert (ev["amount"].is_not_null() == monetary).all()
    amounts = ev.filter(monetary)["amount"]
    assert (amounts > 0).all()
    assert ((amounts * 100).round(6) == (amounts * 100).round(0)).all()  # two decimals


def test_refunds_follow_an_order_and_never_exceed_it(sim: SimResult) -> None:
    ev = sim.events
    orders = (
        ev.filter(pl.col("type") == "order")
        .group_by("user_id")
        .agg(pl.col("ts").min().alias("first_order"), pl.col("amount").max().alias("max_order"))
    )
    refunds = ev.filter(pl.col("type") == "refund").join(orders, on="user_id", how="left")
    assert refunds.height > 0
    assert refunds["first_order"].is_not_null().all()
    assert (refunds["ts"] > refunds["first_order"]).all()
    assert (refunds["amount"] <= refunds["max_order"]).all()


def test_coupon_redeems_follow_a_claim(sim: SimResult) -> None:
    ev = sim.events
    claims = ev.filter(pl.col("type") == "coupon_claim").group_by("user_id").agg(pl.col("ts").min().alias("first"))
    redeems = ev.filter(pl.col("type") == "coupon_redeem").join(claims, on="user_id", how="left")
    assert redeems.height > 0
    assert (redeems["ts"] > redeems["first"]).all()


def test_new_users_register_first_and_existing_users_never_register(sim: SimResult) -> None:
    ev = sim.events
    firsts = ev.group_by("user_id", maintain_order=True).agg(
        pl.col("type").first().alias("first_type"),
        pl.col("type").get(1, null_on_oob=True).alias("second_type"),
        (pl.col("type") == "register").sum().alias("registers"),
    )
    registered = firsts.filter(pl.col("registers") > 0)
    assert 0 < registered.height < firsts.height  # both new and pre-existing users are present
    assert (registered["registers"] == 1).all()
    assert (registered["first_type"] == "register").all()
    assert registered["second_type"].is_in(["follow", "add_contact"]).all()
    new_share = registered.height / CFG.users
    assert 0.3 < new_share < 0.5  # existing_fraction = 0.6


def test_events_mostly_arrive_on_the_acquisition_channel(sim: SimResult) -> None:
    joined = sim.events.join(sim.truth.select("user_id", "acquisition_channel"), on="user_id")
    share = float(np.mean((joined["channel"] == joined["acquisition_channel"]).to_numpy()))
    assert 0.75 < share < 0.95
    top = sim.truth["acquisition_channel"].value_counts(sort=True)["acquisition_channel"].head(3).to_list()
    assert set(top) == {"wecom", "mini_program", "official_account"}


def test_promo_day_multiplies_traffic(sim: SimResult) -> None:
    assert CFG.effective_promo_days == (14,)  # two thirds of 21 days
    per_day = _day_index(sim.events, CFG).value_counts().sort("day")["count"].to_numpy()
    others = np.delete(per_day, 14)
    assert per_day[14] > 2 * np.median(others)


def test_hours_peak_at_lunch_and_evening(sim: SimResult) -> None:
    hour = ((sim.events["ts"] - CFG.start_ms) % DAY_MS) // 3_600_000
    counts = np.bincount(hour.to_numpy(), minlength=24)
    assert counts[[12, 20, 21]].min() > 5 * counts[[2, 3, 4]].max()


def test_order_amounts_scale_with_value_segment(sim: SimResult) -> None:
    orders = sim.events.filter(pl.col("type") == "order").join(
        sim.truth.select("user_id", "value_segment"), on="user_id"
    )
    med = orders.group_by("value_segment").agg(pl.col("amount").median()).sort("value_segment")
    m = dict(zip(med["value_segment"].to_list(), med["amount"].to_list(), strict=True))
    assert m["potential"] < m["regular"] < m["vip"]
    assert 40 < m["potential"] < 90 and 100 < m["regular"] < 220 and 400 < m["vip"] < 900


# --------------------------------------------------------------------------- ground truth


def test_truth_has_one_row_per_user_with_events(sim: SimResult) -> None:
    truth = sim.truth
    assert truth.columns == [
        "user_id",
        "latent_stage",
        "acquisition_channel",
        "inactive_next_h",
        "ordered_next_h",
        "value_segment",
    ]
    assert truth["user_id"].n_unique() == truth.height
    assert set(truth["user_id"]) == set(sim.events["user_id"].unique())
    assert set(truth["value_segment"].unique()) == set(SEGMENTS)
    assert set(truth["acquisition_channel"].unique()) <= set(CHANNELS)


def test_every_stage_appears_in_truth(sim: SimResult) -> None:
    assert set(sim.truth["latent_stage"].unique()) == set(STAGES)


def test_explicit_exit_events_come_from_churned_users(sim: SimResult) -> None:
    ev = sim.events
    exits = ev.filter(pl.col("type").is_in(sorted(EXIT_TYPES)))
    assert exits.height > 0
    assert exits["user_id"].n_unique() == exits.height  # at most one exit per user
    stages = exits.join(sim.truth, on="user_id")
    assert (stages["latent_stage"] == "churned").all()
    # The exit is final: nothing of that user follows it, and the horizon is silent.
    last = ev.group_by("user_id").agg(pl.col("ts").max().alias("last"))
    assert (exits.join(last, on="user_id").select(pl.col("ts") == pl.col("last")).to_series()).all()
    assert stages["inactive_next_h"].all()
    assert not stages["ordered_next_h"].any()


def test_labels_are_consistent_and_informative(sim: SimResult) -> None:
    truth = sim.truth
    # Ordering is activity: an ordering user cannot be inactive.
    assert not (truth["ordered_next_h"] & truth["inactive_next_h"]).any()
    by_stage = truth.group_by("latent_stage").agg(pl.col("inactive_next_h").mean(), pl.col("ordered_next_h").mean())
    rate = {r["latent_stage"]: r for r in by_stage.iter_rows(named=True)}
    assert rate["churned"]["inactive_next_h"] > rate["dormant"]["inactive_next_h"] > rate["mature"]["inactive_next_h"]
    assert rate["mature"]["ordered_next_h"] > rate["dormant"]["ordered_next_h"]


# --------------------------------------------------------------------------- config


def test_default_promo_day_is_two_thirds_through_and_absent_for_short_windows() -> None:
    assert SimConfig(days=30).effective_promo_days == (20,)
    assert SimConfig(days=6).effective_promo_days == ()
    assert SimConfig(days=30, promo_days=(3, 3, 1)).effective_promo_days == (1, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"users": 0},
        {"days": 0},
        {"horizon_days": -1},
        {"existing_fraction": 1.5},
        {"days": 10, "horizon_days": 5, "promo_days": (15,)},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        SimConfig(100)  # type: ignore[call-arg]
