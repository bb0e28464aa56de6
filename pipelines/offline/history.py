"""Offline access to event history: read files, replay them to a date, score every user as of it.

Used by ``lifecycle train``, ``score`` and ``evaluate``. Nothing here has its
own notion of an event or a feature:

* Files in any supported format become :class:`~pipelines.contract.events.RawBatch` es of
  NDJSON payloads and go through the streaming decoder
  (:func:`~pipelines.contract.decode.decode_batch`), so a CSV or Parquet row is accepted
  or rejected for exactly the reasons its JSON form would be (one decoder
  semantics). CSV and Parquet rows are turned into JSON lines column-wise by
  polars, not row by row in Python.
* Replays apply events through :class:`~pipelines.core.state.ShardState` and read
  features with :func:`~pipelines.core.features.compute_features`, in event-time
  order; scores and reasons come from :class:`~pipelines.scoring.scorer.Scorer`, stages
  and tiers from the configured taxonomy (:mod:`pipelines.core.taxonomy`): the same code as the streaming flow.

Offline semantics, compared with a stream: every valid event is applied in
event-time order (a replay has no late events), and a repeated ``event_id`` is
applied once (the first occurrence in the file), as a producer retry should be.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from pipelines.contract.decode import DecodeLimits, decode_batch
from pipelines.contract.events import EventColumns, RawBatch
from pipelines.contract.time import DAY_MS
from pipelines.core.evaluated import FeatureRows
from pipelines.core.features import compute_features
from pipelines.core.state import ShardState
from pipelines.core.taxonomy import Taxonomy
from pipelines.io.files import read_batches

log = logging.getLogger(__name__)

_CHUNK = 250_000
_ROWS_PER_BATCH = 100_000
#: History files hold past events: judge "future" against a clock far ahead, so only the as-of bounds them.
_OFFLINE_FUTURE_MS = 10 * 365 * DAY_MS
_FIELDS = ("event_id", "user_id", "ts", "type", "channel", "amount", "props")


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class EventHistory:
    """Decoded, valid events of a file, sorted by event time, one per ``event_id``."""

    events: EventColumns
    rejected: Counter[str] = field(default_factory=Counter)  # dead letters by reason
    duplicates: int = 0
    examples: tuple[str, ...] = ()  # a few rejected positions with reasons, for messages

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())


def file_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``parquet`` from the file name."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise ValueError(f"{path}: unknown event file type (expected .jsonl[.gz], .ndjson, .csv[.gz] or .parquet)")


def raw_batches(path: Path, *, rows_per_batch: int = _ROWS_PER_BATCH) -> Iterator[RawBatch]:
    """NDJSON payload batches of an event file of any supported format.

    Offsets are source positions: the line number for JSONL and CSV files (the
    CSV header is line 1), the 0-based row for Parquet.
    """
    if not path.is_file():
        raise FileNotFoundError(f"events file not found: {path}")
    fmt = file_format(path)
    if fmt == "jsonl":
        yield from read_batches(path, batch_events=rows_per_batch)
        return
    if fmt == "csv":
        # every cell as text, as a CSV file means it (the JSON encoder below restores numbers);
        # an empty cell is an absent value
        opts = pa_csv.ConvertOptions(column_types=_all_strings(path), strings_can_be_null=True)
        table = pa_csv.read_csv(path, convert_options=opts)
        first_offset = 2
    else:
        table = pq.read_table(path)
        first_offset = 0
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    lines = to_json_lines(frame)
    for i in range(0, lines.shape[0], rows_per_batch):
        chunk = lines[i : i + rows_per_batch]
        offsets = np.arange(first_offset + i, first_offset + i + chunk.shape[0], dtype=np.int64)
        yield RawBatch(str(path), -1, offsets, [s.encode() for s in chunk], int(time.time() * 1000))


def _all_strings(path: Path) -> dict[str, pa.DataType]:
    names = pa_csv.open_csv(path).schema.names
    return {n: pa.string() for n in names}


def _encode(value: pl.Expr) -> pl.Expr:
    """JSON text of each value (``{"v":...}`` encoded by polars, the wrapper sliced off)."""
    return pl.struct(value.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")


def _float_json(num: pl.Expr) -> pl.Expr:
    """JSON numbers of floats. JSON has no infinity: ``1e999`` decodes to one (and is rejected as
    ``bad_amount``, like the same value in a JSON event); NaN becomes null (no value).
    """
    return (
        pl.when(num.is_nan())
        .then(None)
        .when(num == float("inf"))
        .then(pl.lit("1e999"))
        .when(num == float("-inf"))
        .then(pl.lit("-1e999"))
        .otherwise(_encode(num))
    )


def _json_value(frame: pl.DataFrame, name: str) -> pl.Expr:
    """JSON text of one column's values (null where the cell is null)."""
    col = pl.col(name)
    dtype = frame.schema[name]
    if dtype == pl.String and name == "ts":
        # epoch ms written as text (CSV) is a JSON number; anything else (ISO-8601) stays a string
        return pl.when(col.str.contains(r"^-?\d+$")).then(col).otherwise(_encode(col))
    if dtype == pl.String and name == "amount":
        # a number written as text is a JSON number; other text stays a string (rejected as bad_type)
        num = col.str.strip_chars().cast(pl.Float64, strict=False)
        return pl.when(num.is_not_null()).then(_float_json(num)).otherwise(_encode(col))
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            # a naive datetime is ambiguous: send it as ISO without offset, which the decoder rejects
            return _encode(col.dt.to_string("%Y-%m-%dT%H:%M:%S%.f"))
        return col.dt.epoch("ms").cast(pl.String)
    if dtype.is_float():
        return _float_json(col)
    return _encode(col)


def to_json_lines(frame: pl.DataFrame) -> npt.NDArray[np.object_]:
    """Event-contract JSON lines of a table with the contract's columns (extra columns are ignored).

    A null cell omits the key, like a field absent from a JSON event (so a missing
    required value is ``missing_field``, and a null ``amount`` is no amount).
    """
    parts = [
        pl.when(pl.col(name).is_not_null()).then(pl.lit(f'"{name}":') + _json_value(frame, name))
        for name in _FIELDS
        if name in frame.columns
    ]
    if not parts:
        return np.full(frame.height, "{}", dtype=object)
    body = pl.concat_str(parts, separator=",", ignore_nulls=True).fill_null("")
    out = frame.select((pl.lit("{") + body + pl.lit("}")).alias("line"))["line"]
    return out.to_numpy().astype(object)


def read_history(path: Path, *, limits: DecodeLimits | None = None) -> EventHistory:
    """Decode an event file with the streaming decoder, drop repeated event ids, sort by time."""
    lim = limits or DecodeLimits(max_future_ms=_OFFLINE_FUTURE_MS)
    now_ms = int(time.time() * 1000)
    parts: list[EventColumns] = []
    rejected: Counter[str] = Counter()
    examples: list[str] = []
    for raw in raw_batches(path):
        d = decode_batch(raw, now_ms=now_ms, limits=lim)
        parts.append(EventColumns.concat([d.events], keep_payloads=False))  # drops the raw bytes of the batch now
        for r in d.rejects:
            rejected[r.reason.value] += 1
            if len(examples) < 5:
                examples.append(f"{r.position}: {r.reason.value} {r.detail}".rstrip())
    events = EventColumns.concat(parts, keep_payloads=False)
    unique = first_occurrences(events)
    return EventHistory(sort_by_time(unique), rejected, len(events) - len(unique), tuple(examples))


def load_history(paths: Sequence[Path], *, limits: DecodeLimits | None = None) -> EventHistory:
    """THE history loader: one or more event files, decoded as the stream decodes them, one per event id, sorted.

    ``lifecycle train``, ``score``, ``evaluate`` and ``rescore`` all read history through
    here. The same event in two files (overlapping exports) counts once, as in the stream.
    """
    if not paths:
        raise ValueError("no event history files given")
    parts = [read_history(p, limits=limits) for p in paths]
    for p, h in zip(paths, parts, strict=True):
        if h.n_rejected:
            log.warning("%s: %d events rejected (%s)", p, h.n_rejected, "; ".join(h.examples[:3]))
    if len(parts) == 1:
        return parts[0]
    events = EventColumns.concat([h.events for h in parts], keep_payloads=False)
    unique = first_occurrences(events)
    rejected: Counter[str] = Counter()
    for h in parts:
        rejected.update(h.rejected)
    return EventHistory(
        sort_by_time(unique),
        rejected,
        sum(h.duplicates for h in parts) + len(events) - len(unique),
        tuple(e for h in parts for e in h.examples)[:5],
    )


def first_occurrences(ev: EventColumns) -> EventColumns:
    """Each event id once (its first occurrence, order kept), as the stream's deduplication counts it."""
    _, first = np.unique(ev.event_key, return_index=True)
    return ev if first.shape[0] == len(ev) else ev.take(np.sort(first))


# --------------------------------------------------------------------------- replay


def sort_by_time(ev: EventColumns) -> EventColumns:
    """Events in event-time order (stable: equal times keep file order)."""
    if len(ev) < 2 or bool(np.all(ev.ts_ms[1:] >= ev.ts_ms[:-1])):
        return ev
    return ev.take(np.argsort(ev.ts_ms, kind="stable"))


def replay_until(st: ShardState, ev: EventColumns, start: int, until_ms: int) -> int:
    """Apply time-sorted events from index ``start`` up to ``until_ms`` (inclusive); return the next index."""
    end = int(np.searchsorted(ev.ts_ms, until_ms, side="right"))
    for i in range(start, end, _CHUNK):
        st.apply(ev.take(np.arange(i, min(end, i + _CHUNK))))
    return end


def state_as_of(ev: EventColumns, cutoff_ms: int) -> ShardState:
    """The state of every user after all (time-sorted) events at or before ``cutoff_ms``."""
    st = ShardState(capacity=1 << 16)
    replay_until(st, ev, 0, cutoff_ms)
    return st


# --------------------------------------------------------------------------- scoring


def rows_as_of(
    st: ShardState,
    rows: npt.NDArray[np.int64],
    as_of_ms: int,
    taxonomy: Taxonomy,
    *,
    version: int,
    features: npt.NDArray[np.float32] | None = None,
) -> FeatureRows:
    """Feature rows of the state ``rows`` as of ``as_of_ms``, staged by ``taxonomy``, for the label step.

    ``features``: the rows' features when already computed as of ``as_of_ms``. Offline rows carry
    no transition (``prev_stage`` = ``stage``): the streaming state owns each user's previous stage
    and emits transitions when its own clock gets there.
    """
    # an empty selection gives a 0 x N_FEATURES matrix
    feats = compute_features(st, rows, as_of_ms) if features is None else features
    stage = taxonomy.assign_stages(feats)
    return FeatureRows(
        user_id=st.user_id[rows],
        rows=rows,
        features=feats,
        stage=stage,
        prev_stage=stage,
        last_event_ms=st.ts["ref_ts"][rows].copy(),
        from_events=np.zeros(rows.shape[0], bool),
        version=version,
        read_at_ms=0,
    )
