"""Batch decoding: a :class:`~pipelines.contract.events.RawBatch` of NDJSON payloads -> typed columns and rejections.

:func:`decode_batch` turns one batch into typed numpy columns
(:class:`~pipelines.contract.events.EventColumns`) plus a list of
:class:`~pipelines.contract.events.Rejection` records. Decoding is batch-wise: one C-level ``map`` of the
``msgspec`` decoder over the payloads; only when a payload fails (one bad line
stops the ``map``) do we fall back to decoding line by line, so that the bad
line is isolated and the good lines around it are kept. Every payload is
decoded on its own on purpose: decoding the payloads joined into one JSON
array (``[p0,p1,...]``) lets an empty payload vanish, lets one line carrying
``{...},{...}`` become two events, and lets two malformed lines merge into one
"valid" event across the comma between them - and it is slower (the join
copies the batch).

Nothing in here raises on bad input: every invalid event becomes exactly one
rejection with an enumerated :class:`~pipelines.contract.events.RejectReason` and its source position.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contract.events import (
    _BAD_USER_ID,
    CHANNELS,
    EVENT_TYPES,
    MAX_AMOUNT,
    MAX_USER_ID_CHARS,
    MIN_TS_MS,
    TYPE_CODE,
    EventColumns,
    RawBatch,
    Rejection,
    RejectReason,
)
from pipelines.contract.ids import hash_strings, normalize_user_ids


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Validation limits, from settings."""

    max_event_bytes: int = 65_536
    max_future_ms: int = 86_400_000


@dataclass(frozen=True, slots=True)
class Decoded:
    """What :func:`decode_batch` returns: good events and dead letters."""

    events: EventColumns
    rejects: list[Rejection]
    total: int  # events in the raw batch (= len(events) + len(rejects))
    #: the raw batch's stream and whether it is caught up (:class:`~pipelines.contract.events.RawBatch`)
    stream: str = ""
    caught_up: bool = False
    #: the newest event time this batch may move its stream's clock to (the wall clock plus the allowed skew):
    #: an event dated later is applied, at the capped clock, but cannot drag the clock into the future
    clock_cap_ms: int = 2**62


class _WireEvent(msgspec.Struct, gc=False):
    """The JSON shape of an event; see ``docs/events.md``."""

    event_id: str
    user_id: str
    ts: int | dt.datetime
    type: str
    channel: str
    amount: float | None = None
    # Kept raw: we never look inside props on the hot path, so never pay to decode them.
    props: msgspec.Raw = msgspec.Raw(b"null")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_ONE_DECODER = msgspec.json.Decoder(_WireEvent)


#: What a payload that does not decode can raise: msgspec's errors, a string that is not UTF-8
#: (msgspec hands str bytes to Python's codec), nesting deeper than the decoder's recursion limit.
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def _classify(err: BaseException) -> RejectReason:
    if isinstance(err, UnicodeDecodeError | RecursionError):
        return RejectReason.MALFORMED_JSON  # not UTF-8 / nested beyond any sane event: not our JSON
    if isinstance(err, msgspec.DecodeError) and not isinstance(err, msgspec.ValidationError):
        return RejectReason.MALFORMED_JSON
    msg = str(err)
    if "missing required field" in msg:
        return RejectReason.MISSING_FIELD
    if "`$.ts`" in msg:
        return RejectReason.BAD_TIMESTAMP
    if "`$.amount`" in msg and "out of range" in msg:
        return RejectReason.BAD_AMOUNT
    return RejectReason.BAD_TYPE


def _error_detail(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "JSON nested too deeply"
    return str(err)[:200]


def _decode_lines(
    raw: RawBatch, idx: list[int]
) -> tuple[list[_WireEvent], list[int], list[tuple[int, RejectReason, str]]]:
    """Decode the payloads ``idx``, each on its own: one C-level map, per-line fallback on error.

    Each payload is one event or one rejection, never more or less (see the module docstring
    for why the payloads are not joined into one JSON array).
    """
    payloads = raw.payloads
    if not idx:
        return [], [], []
    chosen = payloads if len(idx) == len(payloads) else [payloads[i] for i in idx]
    try:
        return list(map(_ONE_DECODER.decode, chosen)), idx, []
    except _DECODE_ERRORS:
        pass
    good: list[_WireEvent] = []
    good_idx: list[int] = []
    bad: list[tuple[int, RejectReason, str]] = []
    for i in idx:
        try:
            good.append(_ONE_DECODER.decode(payloads[i]))
            good_idx.append(i)
        except _DECODE_ERRORS as err:
            bad.append((i, _classify(err), _error_detail(err)))
    return good, good_idx, bad


_TYPE_VOCAB = pa.array(EVENT_TYPES, pa.string())


_CHANNEL_VOCAB = pa.array(CHANNELS, pa.string())


def _codes(values: list[str], vocab: pa.Array) -> npt.NDArray[np.int8]:
    """Vocabulary codes of ``values`` (-1 for unknown), vectorised through Arrow."""
    if not values:
        return np.zeros(0, np.int8)
    idx = pc.index_in(pa.array(values, pa.string()), value_set=vocab)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int8)


def _normalise_user_ids(ids: list[str]) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.bool_]]:
    """NFC-normalise ids, then flag invalid ones (empty, too long, control chars, padding).

    NFC (canonical composition) only: NFC and NFD spellings of one id are the same user. Not
    NFKC: compatibility variants (full-width ``Ｕ１`` vs ``U1``, ligatures) stay distinct ids,
    since a producer may mean them apart. The checks run on the normalised id, so an NFD
    spelling is accepted or rejected exactly like its NFC spelling (length in code points).
    """
    arr = pa.array(ids, type=pa.string())
    out = np.asarray(ids, dtype=object)
    non_ascii = ~pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
    if non_ascii.any():  # ASCII is NFC already: only the rest pays for normalisation
        normalize_user_ids(out, non_ascii)
        arr = pa.array(out, type=pa.string())
    lengths = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    bad = (lengths == 0) | (lengths > MAX_USER_ID_CHARS)
    bad |= pc.match_substring_regex(arr, _BAD_USER_ID).to_numpy(zero_copy_only=False)
    return out, bad


def _timestamps(raw_ts: list[int | dt.datetime]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Epoch ms of each ``ts`` and a mask of the unusable ones (naive ISO, outside int64)."""
    m = len(raw_ts)
    try:
        return np.fromiter(raw_ts, np.int64, m), np.zeros(m, bool)  # all epoch ms in range: one C loop
    except (TypeError, OverflowError):
        pass
    ts = np.zeros(m, np.int64)
    bad = np.zeros(m, bool)
    for i, t in enumerate(raw_ts):
        if isinstance(t, dt.datetime):
            if t.tzinfo is None:
                bad[i] = True
            else:
                ts[i] = int(t.timestamp() * 1000)
        elif _INT64_MIN <= t <= _INT64_MAX:
            ts[i] = t
        else:  # JSON integers are unbounded; ours are int64 epoch ms
            bad[i] = True
    return ts, bad


def decode_batch(raw: RawBatch, *, now_ms: int, limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """Decode and validate one batch. Never raises on bad input.

    ``now_ms`` is the injected wall clock, used for the future-timestamp check.
    """
    n = len(raw.payloads)
    rejected: list[tuple[int, RejectReason, str]] = []
    max_bytes = limits.max_event_bytes
    if n and max(map(len, raw.payloads)) > max_bytes:
        idx = []
        for i, p in enumerate(raw.payloads):
            if len(p) > max_bytes:
                rejected.append(
                    (i, RejectReason.OVERSIZED, f"{len(p)} bytes > {max_bytes}; payload cut to the first {max_bytes}")
                )
            else:
                idx.append(i)
    else:
        idx = list(range(n))

    wire, good_idx, bad = _decode_lines(raw, idx)
    rejected.extend(bad)
    m = len(wire)
    pos = np.asarray(good_idx, dtype=np.int64)

    # --- timestamps: epoch ms ints on the fast path, ISO-8601 (with offset) otherwise
    ts, ts_bad = _timestamps([e.ts for e in wire])
    ts_bad |= ts < MIN_TS_MS
    future = ~ts_bad & (ts > now_ms + limits.max_future_ms)

    types = _codes([e.type for e in wire], _TYPE_VOCAB)
    chans = _codes([e.channel for e in wire], _CHANNEL_VOCAB)
    # None -> NaN in one C conversion; JSON itself cannot carry NaN (msgspec rejects it as malformed)
    amount = np.array([e.amount for e in wire], dtype=np.float64) if m else np.zeros(0, np.float64)
    amount_missing = np.isnan(amount)
    monetary = (types == TYPE_CODE["order"]) | (types == TYPE_CODE["refund"])
    amount = np.where(monetary & ~amount_missing, amount, 0.0)

    user_ids, uid_bad = (
        _normalise_user_ids([e.user_id for e in wire]) if m else (np.zeros(0, object), np.zeros(0, bool))
    )

    # Order of checks = priority of reasons when an event has several faults.
    checks: list[tuple[npt.NDArray[np.bool_], RejectReason]] = [
        (uid_bad, RejectReason.BAD_USER_ID),
        (ts_bad, RejectReason.BAD_TIMESTAMP),
        (future, RejectReason.FUTURE_TIMESTAMP),
        (types < 0, RejectReason.UNKNOWN_EVENT_TYPE),
        (chans < 0, RejectReason.UNKNOWN_CHANNEL),
        (monetary & amount_missing, RejectReason.MISSING_FIELD),
        (monetary & ~(np.abs(amount) <= MAX_AMOUNT), RejectReason.BAD_AMOUNT),  # inf and absurd values
        (monetary & (amount < 0), RejectReason.NEGATIVE_AMOUNT),
    ]
    ok = np.ones(m, bool)
    for mask, reason in checks:
        hit = ok & mask
        if hit.any():
            for j in np.flatnonzero(hit):
                rejected.append((int(pos[j]), reason, _detail(reason, wire[j])))
            ok &= ~hit

    if ok.all():  # the common case: no fancy-index copies
        keep: npt.NDArray[np.intp] | slice = slice(None)
        ev_ids = np.asarray([e.event_id for e in wire], dtype=object)
    else:
        keep = np.flatnonzero(ok)
        ev_ids = np.asarray([wire[j].event_id for j in keep], dtype=object)
    events = EventColumns(
        user_key=hash_strings(user_ids[keep]),
        user_id=user_ids[keep],
        event_key=hash_strings(ev_ids),
        ts_ms=ts[keep],
        type_code=types[keep],
        channel_code=chans[keep],
        amount=amount[keep],
        source=raw.source,
        partition=raw.partition,
        offsets=raw.offsets[pos[keep]] if m else np.zeros(0, np.int64),
        payload_idx=pos[keep],
        batch_payloads=raw.payloads,
        read_at_ms=raw.read_at_ms,
    )
    # An oversized payload is kept only up to the limit: a 10 MB line must not travel on as
    # Arrow column, IPC stream and HTTP body (a copy each) into a rejected_events row. Its
    # position (file:line, topic/partition/offset) still leads to the original.
    rejects = [
        Rejection(
            reason,
            raw.source,
            raw.partition,
            int(raw.offsets[i]),
            bytes(raw.payloads[i][:max_bytes] if reason is RejectReason.OVERSIZED else raw.payloads[i]),
            detail,
        )
        for i, reason, detail in sorted(rejected)
    ]
    return Decoded(events=events, rejects=rejects, total=n, stream=raw.stream_name, caught_up=raw.caught_up)


def _detail(reason: RejectReason, e: _WireEvent) -> str:
    if reason is RejectReason.UNKNOWN_EVENT_TYPE:
        return f"type={e.type[:64]!r}"
    if reason is RejectReason.UNKNOWN_CHANNEL:
        return f"channel={e.channel[:64]!r}"
    if reason in (RejectReason.NEGATIVE_AMOUNT, RejectReason.BAD_AMOUNT):
        return f"amount={e.amount!r}"
    if reason is RejectReason.MISSING_FIELD:
        return f"{e.type} requires amount"
    if reason in (RejectReason.BAD_TIMESTAMP, RejectReason.FUTURE_TIMESTAMP):
        return f"ts={str(e.ts)[:64]}"
    if reason is RejectReason.BAD_USER_ID:
        return f"user_id={e.user_id[:32]!r} ({len(e.user_id)} chars)"
    return ""
