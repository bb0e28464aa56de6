"""The interaction-event contract: vocabulary, reject reasons and the typed containers.

Every source (simulator, file, Kafka) hands the dataflow a :class:`RawBatch` of
NDJSON payloads with their source positions; :mod:`pipelines.contract.decode`
turns it into :class:`EventColumns` (typed numpy columns) and :class:`Rejection`
records, one per invalid event, each with an enumerated :class:`RejectReason`.
The vocabulary (event types, channels) is the one ``docs/event.schema.json``
documents; a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipelines.contract.time import MIN_EPOCH_MS

# --------------------------------------------------------------------------- vocabulary

#: Event types of the private-domain journey, grouped by family. The order is the
#: wire-independent type code (int8); append new types at the end only.
EVENT_TYPES: tuple[str, ...] = (
    "register",
    "follow",
    "add_contact",
    "message_read",
    "message_click",
    "page_view",
    "share",
    "referral",
    "join_group",
    "leave_group",
    "live_watch",
    "coupon_claim",
    "coupon_redeem",
    "add_to_cart",
    "order",
    "refund",
    "checkin",
    "unfollow",
    "delete_contact",
    "unsubscribe",
)

#: Channels a brand reaches its users on. Order = channel code; append only.
CHANNELS: tuple[str, ...] = (
    "wecom",
    "official_account",
    "mini_program",
    "app",
    "douyin",
    "community_group",
    "offline_store",
    "sms",
    "web",
    "other",
)

TYPE_CODE: dict[str, int] = {name: i for i, name in enumerate(EVENT_TYPES)}
CHANNEL_CODE: dict[str, int] = {name: i for i, name in enumerate(CHANNELS)}

#: Types that carry a monetary ``amount`` (required for them, ignored otherwise).
MONETARY_TYPES: frozenset[str] = frozenset({"order", "refund"})
#: Explicit churn signals: the user cut the connection.
EXIT_TYPES: frozenset[str] = frozenset({"unfollow", "delete_contact", "unsubscribe"})
#: Acquisition / reconnection: the user (re)entered the private domain.
ACQUIRE_TYPES: frozenset[str] = frozenset({"register", "follow", "add_contact"})

MIN_TS_MS = MIN_EPOCH_MS  # earlier epoch-ms values are bad data
MAX_USER_ID_CHARS = 128
#: Largest accepted ``amount`` (CNY). Larger finite values (``1e300``) overflow the float32 state
#: sums to inf and would poison that user's features for good, so they are bad data, not orders.
MAX_AMOUNT = 1e9
#: What makes a user id invalid besides its length: any control character (C0, DEL, C1), or
#: leading/trailing white space in the Unicode sense (U+00A0, U+3000, ... and the BOM), which
#: no producer means as part of an id. Format characters (ZWJ in emoji sequences) are allowed.
_BAD_USER_ID = r"\p{Cc}|^[\s\p{Z}\x{FEFF}]|[\s\p{Z}\x{FEFF}]$"


class RejectReason(enum.StrEnum):
    """Why an event was not applied. The values are stable: they are metric labels
    and the ``reason`` column of ``rejected_events``.
    """

    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    NEGATIVE_AMOUNT = "negative_amount"
    BAD_AMOUNT = "bad_amount"
    OVERSIZED = "oversized"
    BAD_USER_ID = "bad_user_id"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_CHANNEL = "unknown_channel"
    LATE = "late"
    USER_ID_COLLISION = "user_id_collision"
    NEW_USER_RATE = "new_user_rate"


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, slots=True)
class RawBatch:
    """A batch of undecoded payloads from one source partition.

    ``offsets[i]`` is the position of ``payloads[i]``: the Kafka offset, or the
    1-based line number for files. ``source`` is the topic or file path.
    """

    source: str
    partition: int
    offsets: npt.NDArray[np.int64]
    payloads: Sequence[bytes]
    #: Wall-clock ms when the batch was read; used for pipeline latency.
    read_at_ms: int = 0
    #: The ordered stream this batch continues (its event-time frontier); default ``source:partition``.
    #: A file source reading several files in order is one stream.
    stream: str = ""
    #: The stream has nothing more to read for now (no payloads; a Kafka partition at its end).
    caught_up: bool = False

    @property
    def stream_name(self) -> str:
        return self.stream or f"{self.source}:{self.partition}"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A dead letter: the original bytes, why, and where they came from."""

    reason: RejectReason
    source: str
    partition: int
    offset: int
    payload: bytes
    detail: str = ""

    @property
    def position(self) -> str:
        """Human-readable source position, e.g. ``events:3@1042`` or ``file.jsonl:17``."""
        if self.partition < 0:
            return f"{self.source}:{self.offset}"
        return f"{self.source}[{self.partition}]@{self.offset}"


def bound_dead_letters(rejects: list[Rejection], max_bytes: int) -> list[Rejection]:
    """Dead letters whose payload holds at most ``max_bytes`` (the first bytes; 0 = whole payloads).

    A dead letter is kept for its reason and position; a 64 KiB payload kept for 90 days per
    rejected event is what a flood of oversized lines would otherwise cost the store (and the
    dead-letter topic). A cut payload's ``detail`` says so, with its original length.
    """
    if max_bytes <= 0 or all(len(r.payload) <= max_bytes for r in rejects):
        return rejects
    return [
        r
        if len(r.payload) <= max_bytes
        else dataclasses.replace(
            r,
            payload=bytes(r.payload[:max_bytes]),
            detail=f"{r.detail} (payload cut to its first {max_bytes} of {len(r.payload)} bytes)".lstrip(),
        )
        for r in rejects
    ]


@dataclass(frozen=True, slots=True)
class EventColumns:
    """Decoded, validated events as parallel numpy columns (one row per event)."""

    user_key: npt.NDArray[np.int64]  # 64-bit hash of the NFC user id
    user_id: npt.NDArray[np.object_]  # the NFC user id (str)
    event_key: npt.NDArray[np.int64]  # 64-bit hash of event_id (dedup)
    ts_ms: npt.NDArray[np.int64]
    type_code: npt.NDArray[np.int8]
    channel_code: npt.NDArray[np.int8]
    amount: npt.NDArray[np.float64]  # 0.0 where the type carries no amount
    # provenance, kept so that later stages (lateness, collisions) can dead-letter
    source: str = ""
    partition: int = -1
    offsets: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    #: row -> index into ``batch_payloads`` (the raw batch, shared, not copied per shard)
    payload_idx: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    batch_payloads: Sequence[bytes] = ()
    read_at_ms: int = 0

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])

    def take(self, idx: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> EventColumns:
        """Rows selected by an index or mask, provenance included."""
        return EventColumns(
            user_key=self.user_key[idx],
            user_id=self.user_id[idx],
            event_key=self.event_key[idx],
            ts_ms=self.ts_ms[idx],
            type_code=self.type_code[idx],
            channel_code=self.channel_code[idx],
            amount=self.amount[idx],
            source=self.source,
            partition=self.partition,
            offsets=self.offsets[idx],
            payload_idx=self.payload_idx[idx],
            batch_payloads=self.batch_payloads,
            read_at_ms=self.read_at_ms,
        )

    def compact(self) -> EventColumns:
        """The same rows, holding only their own raw payloads (for pickling across processes)."""
        own = [self.batch_payloads[int(i)] for i in self.payload_idx]
        return dataclasses.replace(self, payload_idx=np.arange(len(own), dtype=np.int64), batch_payloads=own)

    def rejections(self, mask: npt.NDArray[np.bool_], reason: RejectReason, detail: str = "") -> list[Rejection]:
        """Dead letters for the rows in ``mask`` (used by stages after decoding)."""
        return [
            Rejection(reason, self.source, self.partition, int(off), bytes(self.batch_payloads[int(i)]), detail)
            for off, i in zip(self.offsets[mask], self.payload_idx[mask], strict=True)
        ]

    @staticmethod
    def empty() -> EventColumns:
        return EventColumns(
            user_key=np.zeros(0, np.int64),
            user_id=np.zeros(0, object),
            event_key=np.zeros(0, np.int64),
            ts_ms=np.zeros(0, np.int64),
            type_code=np.zeros(0, np.int8),
            channel_code=np.zeros(0, np.int8),
            amount=np.zeros(0, np.float64),
        )

    @staticmethod
    def concat(parts: Sequence[EventColumns], *, keep_payloads: bool = True) -> EventColumns:
        """Concatenate batches (provenance of the first part is kept: offline use only).

        Raw payloads are carried only when ``keep_payloads`` is set and every part
        still has them; offline replays never dead-letter after decoding, so they
        drop the bytes (most of a history's memory) with ``keep_payloads=False``.
        """
        parts = [p for p in parts if len(p)]
        if not parts:
            return EventColumns.empty()
        n = sum(len(p) for p in parts)
        keep = keep_payloads and all(len(p.batch_payloads) for p in parts)
        return EventColumns(
            user_key=np.concatenate([p.user_key for p in parts]),
            user_id=np.concatenate([p.user_id for p in parts]),
            event_key=np.concatenate([p.event_key for p in parts]),
            ts_ms=np.concatenate([p.ts_ms for p in parts]),
            type_code=np.concatenate([p.type_code for p in parts]),
            channel_code=np.concatenate([p.channel_code for p in parts]),
            amount=np.concatenate([p.amount for p in parts]),
            source=parts[0].source,
            partition=parts[0].partition,
            offsets=np.concatenate([p.offsets for p in parts]),
            payload_idx=np.arange(n, dtype=np.int64) if keep else np.zeros(n, np.int64),
            batch_payloads=[p.batch_payloads[int(i)] for p in parts for i in p.payload_idx] if keep else (),
        )


# --------------------------------------------------------------------------- decoding
