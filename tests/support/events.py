"""Builders of hand-made events for tests: JSON lines and decoded columns."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from pipelines.contract.events import CHANNEL_CODE, TYPE_CODE, EventColumns, RawBatch
from pipelines.contract.ids import hash_strings

_EVENT_SEQ = itertools.count(1)
DAY_MS = 86_400_000
T0 = 1_790_000_000_000  # 2026-09-21T13:33:20Z
NOW = T0 + 400 * DAY_MS  # a wall clock later than every test event


def line(**over: Any) -> bytes:
    """One valid event as a JSON line, with fields overridden (None removes a field)."""
    ev: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "ts": T0,
        "type": "page_view",
        "channel": "wecom",
    }
    for k, v in over.items():
        if v is None:
            ev.pop(k, None)
        else:
            ev[k] = v
    return json.dumps(ev, ensure_ascii=False).encode()


def raw(lines: list[bytes], source: str = "test.jsonl") -> RawBatch:
    return RawBatch(source, -1, np.arange(1, len(lines) + 1, dtype=np.int64), lines)


def columns(rows: list[tuple[str, int, str] | tuple[str, int, str, float]]) -> EventColumns:
    """Decoded events from (user_id, ts_ms, type[, amount]) tuples, channel wecom."""
    n = len(rows)
    ids = np.array([r[0] for r in rows], dtype=object)
    return EventColumns(
        user_key=hash_strings(ids),
        user_id=ids,
        event_key=np.fromiter((next(_EVENT_SEQ) for _ in range(n)), np.int64, n),  # unique: not duplicates
        ts_ms=np.array([r[1] for r in rows], np.int64),
        type_code=np.array([TYPE_CODE[r[2]] for r in rows], np.int8),
        channel_code=np.full(n, CHANNEL_CODE["wecom"], np.int8),
        amount=np.array([r[3] if len(r) > 3 else 0.0 for r in rows], np.float64),  # type: ignore[misc]
        source="test",
        partition=0,
        offsets=np.arange(n, dtype=np.int64),
        payload_idx=np.arange(n, dtype=np.int64),
        batch_payloads=[b"{}"] * n,
    )
