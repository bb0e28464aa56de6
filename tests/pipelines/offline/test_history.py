"""Batch reading and scoring: one decoder for every file format, the streaming scorer, no look-ahead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipelines.contract.events import EventColumns
from pipelines.contract.time import as_of_ms, ms_to_day
from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.offline.history import read_history
from pipelines.offline.score import score_as_of, write_scores
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer
from tests.support.events import DAY_MS, T0, columns


def _row(eid: str, uid: str, ts: int | str, type_: str, channel: str, **extra: object) -> dict:
    return {"event_id": eid, "user_id": uid, "ts": ts, "type": type_, "channel": channel, **extra}


ROWS = [
    _row("e1", "u1", T0, "page_view", "wecom"),
    _row("e2", "u1", "2026-09-22T08:00:00+08:00", "order", "app", amount=129.9),
    _row("e3", "u2", T0 + 5, "message_read", "sms", amount=None),
    _row("e4", "u2", T0 + 6, "teleport", "sms"),  # unknown type
    _row("e5", "u3", T0 + 7, "order", "web"),  # an order without its amount
    _row("e6", "u3", "2026-10-01T08:00:00", "share", "web"),  # ISO without offset
    _row("e1", "u1", T0, "page_view", "wecom"),  # a producer retry
]


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu")


def _write(fmt: str, path: Path) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    else:
        frame = pl.DataFrame(
            {k: [None if r.get(k) is None else str(r[k]) for r in ROWS] for k in ROWS[1]}, schema_overrides={}
        )
        if fmt == "csv":
            frame.write_csv(path)
        else:
            # typed as a producer would write it: amount as a number
            frame.with_columns(pl.col("amount").cast(pl.Float64)).write_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet_rows_decode_exactly_like_their_json_lines(tmp_path: Path, fmt: str) -> None:
    ref = read_history(_write("jsonl", tmp_path / "ev.jsonl"))
    got = read_history(_write(fmt, tmp_path / f"ev.{fmt}"))
    for name in ("user_id", "user_key", "event_key", "ts_ms", "type_code", "channel_code", "amount"):
        np.testing.assert_array_equal(getattr(got.events, name), getattr(ref.events, name), err_msg=name)
    assert ref.rejected == {"unknown_event_type": 1, "missing_field": 1, "bad_timestamp": 1}
    assert got.rejected == ref.rejected
    assert got.duplicates == ref.duplicates == 1  # a repeated event_id is applied once
    assert len(got.events) == 3
    if fmt == "csv":  # positions are file lines (the header is line 1)
        assert any(e.startswith(f"{tmp_path / 'ev.csv'}:5: unknown_event_type") for e in got.examples)


def test_parquet_with_typed_timestamps_decodes_like_json(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "event_id": ["a", "b", "c"],
            "user_id": ["u1", "u1", "u2"],
            "ts": pl.Series([T0, T0 + 1000, T0 + 2000]).cast(pl.Datetime("ms", "UTC")),
            "type": ["page_view", "order", "order"],
            "channel": ["app", "app", "app"],
            "amount": [None, 10.0, float("inf")],
        }
    )
    frame.write_parquet(tmp_path / "typed.parquet")
    hist = read_history(tmp_path / "typed.parquet")
    assert hist.events.ts_ms.tolist() == [T0, T0 + 1000]
    assert hist.rejected == {"bad_amount": 1}  # infinity, as 1e999 in JSON


def test_unknown_file_types_are_refused(tmp_path: Path) -> None:
    (tmp_path / "ev.xlsx").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown event file type"):
        read_history(tmp_path / "ev.xlsx")
    with pytest.raises(FileNotFoundError):
        read_history(tmp_path / "missing.jsonl")


def test_as_of_is_the_end_of_the_operating_day() -> None:
    end = as_of_ms("2026-09-28")
    assert ms_to_day(end) == "2026-09-28"
    assert ms_to_day(end + 1) == "2026-09-29"


def _silent_and_busy(days: int = 90) -> list[tuple]:
    rows: list[tuple] = []
    for d in range(20):  # engaged for 20 days, two orders, then silent
        rows += [("silent", T0 + d * DAY_MS, "page_view"), ("silent", T0 + d * DAY_MS + 1, "message_read")]
    rows += [("silent", T0 + 3 * DAY_MS + 2, "order", 120.0), ("silent", T0 + 9 * DAY_MS + 2, "order", 80.0)]
    rows += [("busy", T0 + d * DAY_MS + 3, "page_view") for d in range(days)]
    rows += [("busy", T0 + d * DAY_MS + 4, "order", 50.0) for d in range(0, days, 9)]
    return sorted(rows, key=lambda r: r[1])


def _fixed_clock() -> float:
    """The wall clock of ``scored_at``, fixed: the rows are then a function of the events alone."""
    return 1_800_000_000.0


def _ev(rows: list[tuple]) -> EventColumns:
    return columns(rows)


def test_scores_ignore_every_event_after_as_of(scorer: Scorer) -> None:
    cutoff = T0 + 60 * DAY_MS
    rows = _silent_and_busy()
    past = [r for r in rows if r[1] <= cutoff]
    ref = score_as_of(_ev(past), cutoff_ms=cutoff, scorer=scorer, clock=_fixed_clock)
    changed_future = [(r[0], r[1], "order", 999.0) if r[1] > cutoff else r for r in rows]
    new_future = rows + [("silent", cutoff + 1, "order", 10.0), ("newcomer", cutoff + DAY_MS, "register")]
    for variant in (rows, changed_future, sorted(new_future, key=lambda r: r[1])):
        got = score_as_of(_ev(variant), cutoff_ms=cutoff, scorer=scorer, clock=_fixed_clock)
        assert got.equals(ref)


def test_a_long_silent_user_is_churned_and_told_so(scorer: Scorer) -> None:
    table = score_as_of(_ev(_silent_and_busy()), cutoff_ms=T0 + 70 * DAY_MS, scorer=scorer, clock=_fixed_clock)
    by_user = {r["user_id"]: r for r in table.to_pylist()}
    silent, busy = by_user["silent"], by_user["busy"]
    assert silent["stage"] == "churned" and silent["churn_risk"] > 0.7 > busy["churn_risk"]
    assert 1 <= len(silent["reasons"]) <= 3
    inactivity = ("no activity for", "low overall activity", "active on only 0", "activity fell")
    assert any(r.startswith(inactivity) for r in silent["reasons"]), silent["reasons"]
    # the silence itself is named, with the feature's value: 51 days since the last event on day 19
    assert "no activity for 51 days" in silent["reasons"], silent["reasons"]


def test_batch_scores_and_reasons_equal_the_streaming_shard(scorer: Scorer) -> None:
    ev = _ev(_silent_and_busy(days=40))
    proc = ShardProcessor(ShardConfig())
    closed = proc.process(ev).rows
    provisional = proc.flush().rows
    # the last closed tick, and the open tick scored provisionally at the end of the input
    for rows in (closed[-1], provisional[-1]):
        stream = scorer.score(rows.features)
        batch = score_as_of(ev, cutoff_ms=rows.version, scorer=scorer, clock=_fixed_clock).to_pylist()
        by_user = {r["user_id"]: r for r in batch}
        for i, uid in enumerate(rows.user_id):
            b = by_user[uid]
            assert b["churn_risk"] == pytest.approx(float(stream.churn_risk[i]), abs=1e-6)
            assert b["purchase_propensity"] == pytest.approx(float(stream.purchase_propensity[i]), abs=1e-6)
            assert b["reasons"] == stream.reasons[i].as_py()


def test_batch_scoring_is_deterministic_on_cpu(scorer: Scorer) -> None:
    ev = _ev(_silent_and_busy())
    a = score_as_of(ev, cutoff_ms=T0 + 50 * DAY_MS, scorer=scorer, clock=_fixed_clock)
    b = score_as_of(
        ev, cutoff_ms=T0 + 50 * DAY_MS, scorer=Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu"), clock=_fixed_clock
    )
    assert a.equals(b)


def test_scores_write_as_csv_with_joined_reasons_and_as_parquet_with_lists(tmp_path: Path, scorer: Scorer) -> None:
    table = score_as_of(_ev(_silent_and_busy()), cutoff_ms=T0 + 70 * DAY_MS, scorer=scorer, clock=_fixed_clock)
    write_scores(table, tmp_path / "s.parquet")
    write_scores(table, tmp_path / "s.csv")
    assert pq.read_table(tmp_path / "s.parquet").equals(table)
    csv = pl.read_csv(tmp_path / "s.csv")
    assert csv["user_id"].to_list() == table.column("user_id").to_pylist()
    assert csv["reasons"].to_list() == ["; ".join(r) for r in table.column("reasons").to_pylist()]
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        write_scores(table, tmp_path / "s.txt")


def test_csv_text_becomes_the_json_a_producer_would_send() -> None:
    from pipelines.offline.history import to_json_lines

    frame = pl.DataFrame(
        {
            "event_id": ["a", "b", "c", "d"],
            "user_id": ["u", "u", "u", None],
            "ts": ["1790000000000", "2026-10-01T00:00:00+08:00", "soon", "1"],
            "type": ["order"] * 4,
            "channel": ["app"] * 4,
            "amount": [".5", "abc", "inf", None],
        }
    )
    lines = [json.loads(s.replace("1e999", '"INF"')) for s in to_json_lines(frame)]
    assert lines[0]["ts"] == 1790000000000 and lines[0]["amount"] == 0.5  # numbers in text are numbers
    assert lines[1]["ts"] == "2026-10-01T00:00:00+08:00" and lines[1]["amount"] == "abc"  # -> bad_type
    assert lines[2]["amount"] == "INF"  # infinity travels as 1e999 -> bad_amount
    assert "user_id" not in lines[3] and "amount" not in lines[3]  # an empty cell is an absent field
