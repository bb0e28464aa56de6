import numpy as np
import pytest

from pipelines.contract.decode import DecodeLimits, decode_batch
from pipelines.contract.events import CHANNELS, EVENT_TYPES, RejectReason
from tests.support.events import NOW, T0, line, raw

BAD_EVENTS: list[tuple[bytes, RejectReason]] = [
    (b'{"event_id": "e1", "user_id": ', RejectReason.MALFORMED_JSON),
    (b"\xff\xfe not utf-8", RejectReason.MALFORMED_JSON),
    (line(user_id=None), RejectReason.MISSING_FIELD),
    (line(type="order", amount=None), RejectReason.MISSING_FIELD),
    (line(user_id=12345), RejectReason.BAD_TYPE),
    (b"[1, 2, 3]", RejectReason.BAD_TYPE),
    (line(ts="yesterday"), RejectReason.BAD_TIMESTAMP),
    (line(ts="2026-10-01T08:00:00"), RejectReason.BAD_TIMESTAMP),  # no UTC offset
    (line(ts=12), RejectReason.BAD_TIMESTAMP),  # epoch seconds are not epoch ms
    (line(ts=NOW + 2 * 86_400_000), RejectReason.FUTURE_TIMESTAMP),
    (line(type="order", amount=-5.0), RejectReason.NEGATIVE_AMOUNT),
    (
        b'{"event_id":"e1","user_id":"u1","ts":1790000000000,"type":"order","channel":"app","amount":1e999}',
        RejectReason.BAD_AMOUNT,
    ),
    (line(props={"blob": "x" * 70_000}), RejectReason.OVERSIZED),
    (line(user_id=""), RejectReason.BAD_USER_ID),
    (line(user_id="u" * 200), RejectReason.BAD_USER_ID),
    (line(user_id="u1\n"), RejectReason.BAD_USER_ID),
    (line(type="teleport"), RejectReason.UNKNOWN_EVENT_TYPE),
    (line(channel="carrier_pigeon"), RejectReason.UNKNOWN_CHANNEL),
]


@pytest.mark.parametrize(
    ("payload", "reason"), BAD_EVENTS, ids=[f"{r.value}-{i}" for i, (_, r) in enumerate(BAD_EVENTS)]
)
def test_each_bad_event_is_rejected_with_its_reason_and_position(payload: bytes, reason: RejectReason) -> None:
    d = decode_batch(raw([payload], source="in.jsonl"), now_ms=NOW)
    assert len(d.events) == 0
    assert [r.reason for r in d.rejects] == [reason]
    rej = d.rejects[0]
    assert rej.payload == payload[: DecodeLimits().max_event_bytes]  # oversized ones keep a bounded prefix
    assert rej.position == "in.jsonl:1"


def test_every_decode_reason_is_covered_by_a_crafted_event() -> None:
    shard_level = {RejectReason.LATE, RejectReason.USER_ID_COLLISION, RejectReason.NEW_USER_RATE}
    decode_reasons = set(RejectReason) - shard_level
    assert {r for _, r in BAD_EVENTS} == decode_reasons


@pytest.mark.parametrize(("payload", "reason"), BAD_EVENTS[::3])
def test_one_bad_event_in_a_batch_rejects_only_itself(payload: bytes, reason: RejectReason) -> None:
    good = [line(event_id=f"e{i}", user_id=f"u{i}", ts=T0 + i) for i in range(50)]
    batch = good[:20] + [payload] + good[20:]
    d = decode_batch(raw(batch), now_ms=NOW)
    assert d.total == 51
    assert [(r.reason, r.offset) for r in d.rejects] == [(reason, 21)]
    assert list(d.events.user_id) == [f"u{i}" for i in range(50)]
    assert list(d.events.offsets) == list(range(1, 21)) + list(range(22, 52))


def test_iso_and_epoch_ms_timestamps_decode_to_the_same_instant() -> None:
    d = decode_batch(
        raw([line(ts="2026-10-01T08:00:00+08:00"), line(ts="2026-10-01T00:00:00Z"), line(ts=1_790_812_800_000)]),
        now_ms=NOW,
    )
    assert not d.rejects
    assert set(d.events.ts_ms.tolist()) == {1_790_812_800_000}


def test_every_vocabulary_type_and_channel_is_accepted() -> None:
    lines = [
        line(
            event_id=f"e{i}",
            type=t,
            channel=CHANNELS[i % len(CHANNELS)],
            amount=1.0 if t in ("order", "refund") else None,
        )
        for i, t in enumerate(EVENT_TYPES)
    ]
    d = decode_batch(raw(lines), now_ms=NOW)
    assert not d.rejects
    assert len(d.events) == len(EVENT_TYPES)


def test_nfc_and_nfd_spellings_of_a_user_id_are_one_user() -> None:
    nfc, nfd = "caf\u00e9-\u5f20", "cafe\u0301-\u5f20"
    d = decode_batch(raw([line(user_id=nfc), line(user_id=nfd)]), now_ms=NOW)
    assert not d.rejects
    assert d.events.user_key[0] == d.events.user_key[1]
    assert d.events.user_id[0] == d.events.user_id[1] == nfc


def test_amount_is_ignored_for_non_monetary_types() -> None:
    d = decode_batch(raw([line(type="page_view", amount=-3.0)]), now_ms=NOW)
    assert not d.rejects
    assert d.events.amount.tolist() == [0.0]


def test_oversized_limit_is_configurable() -> None:
    d = decode_batch(raw([line()]), now_ms=NOW, limits=DecodeLimits(max_event_bytes=64))
    assert [r.reason for r in d.rejects] == [RejectReason.OVERSIZED]
    assert np.asarray(d.events.ts_ms).size == 0
