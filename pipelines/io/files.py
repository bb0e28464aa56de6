"""Bytewax sources that hand the flow whole batches (:class:`~pipelines.contract.events.RawBatch`).

Bytewax wraps every item in Python bookkeeping, so each item here is a batch of
thousands of raw payloads, never a single event (DESIGN.md: per-item overhead
dominates otherwise).

Resume semantics (all sources): the snapshot taken at the end of an epoch is
the position *after* the last batch emitted; on resume the partition continues
with the next unread payload, so with the state snapshot of the same epoch
nothing is lost and nothing is applied twice.

Files are one stream (:data:`FILES_STREAM`): a :class:`FileSource` reads its files in
the order given, as one Bytewax partition whose resume state records how far each file
(by its resolved path) was read. The partition's name does not depend on the files, so a
recovery store written by ``run --input part1.jsonl`` resumes under ``run --input
part2.jsonl``: part1 is not read again (or is read on from where it stopped), part2 from
its start, and the event-time frontier continues across the two, exactly as in ``run
--input part1.jsonl,part2.jsonl``.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from pipelines.contract.events import RawBatch
from pipelines.contract.time import Clock
from pipelines.io.kafka.stop import STOP_REQUESTED

#: Called with the number of (uncompressed) bytes a file partition has just read (``False``), or skipped
#: on resume because an earlier run read them (``True``): a progress bar's rate counts only the first.
OnRead = Callable[[int, bool], None]
#: Reads a table file (CSV, Parquet) as batches of NDJSON payloads of at most the given size, the same
#: batches every time (``pipelines.offline.history.raw_batches``; injected: io does not decode tables).
TableReader = Callable[[Path, int], Iterator[RawBatch]]

#: Names of the files read line by line as NDJSON; every other file goes through the table reader.
NDJSON_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
#: Table files a :class:`FileSource` reads with a table reader.
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def is_ndjson(path: Path) -> bool:
    """True for the NDJSON files read line by line (by name: ``.jsonl``, ``.ndjson``, ``.json``, with ``.gz``)."""
    return path.name.lower().endswith(NDJSON_SUFFIXES)


def file_bytes(path: Path) -> int:
    """Bytes a file source reads from ``path``: its size, or for gzip the uncompressed size in its trailer.

    The gzip trailer holds the size modulo 2**32 (of the last member), so beyond 4 GiB this is a
    lower bound and a progress bar's total is only approximate.
    """
    size = path.stat().st_size
    if path.suffix != ".gz" or size < 18:
        return size
    with open(path, "rb") as fh:
        fh.seek(-4, io.SEEK_END)
        isize = int.from_bytes(fh.read(4), "little")
    return isize if isize else size


def _open(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - closed by the partition


#: Longest line a file source holds in memory. A longer line is read as its first bytes (the decoder
#: rejects it as oversized, a dead letter with its file and line) and the rest is skipped in chunks, so
#: a multi-gigabyte line without a newline cannot exhaust memory.
MAX_LINE_BYTES = 1 << 20
_SKIP_CHUNK = 1 << 20
#: A batch ends once its lines hold this many bytes (or at ``batch_events`` lines, whichever comes
#: first): a batch of long lines is bounded in bytes, not only in lines. With the line bound, one batch
#: holds at most ``max_batch_bytes + max_line_bytes`` bytes of payload.
MAX_BATCH_BYTES = 32 << 20


class _FilePartition(StatefulSourcePartition[RawBatch, tuple[int, int]]):
    """Reads NDJSON lines in batches; state = (byte offset, lines read)."""

    def __init__(
        self,
        path: Path,
        batch_events: int,
        resume: tuple[int, int] | None,
        clock: Clock,
        max_line_bytes: int = MAX_LINE_BYTES,
        on_read: OnRead | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._max_line = max_line_bytes
        self._max_bytes = max_batch_bytes
        self._on_read = on_read
        self._path = path
        self._name = str(path)
        self._batch = batch_events
        self._clock = clock
        self._fh = _open(path)
        self._pos, self._line = resume or (0, 0)
        if self._pos:
            self._fh.seek(self._pos)
            if on_read is not None:
                on_read(self._pos, True)
        self._buf = self._fh
        self._done = False

    def next_batch(self) -> list[RawBatch]:
        if self._done:
            raise StopIteration()
        lines: list[bytes] = []
        numbers: list[int] = []
        pos, line_no = self._pos, self._line
        readline = self._buf.readline
        size = 0
        while len(lines) < self._batch and size < self._max_bytes:
            raw = readline(self._max_line)
            if not raw:
                self._done = True
                break
            pos += len(raw)
            if len(raw) == self._max_line and not raw.endswith(b"\n"):
                while (rest := readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                    pos += len(rest)  # the rest of an over-long line: skipped, never held
                pos += len(rest)
            line_no += 1
            stripped = raw.rstrip(b"\r\n")
            if stripped.strip():  # blank lines are not events
                lines.append(stripped)
                numbers.append(line_no)
                size += len(stripped)
        if self._on_read is not None:
            self._on_read(pos - self._pos, False)
        self._pos, self._line = pos, line_no
        if not lines:
            if self._done:
                raise StopIteration()
            return []
        return [RawBatch(self._name, -1, np.asarray(numbers, np.int64), lines, int(self._clock() * 1000))]

    def snapshot(self) -> tuple[int, int]:
        return (self._pos, self._line)

    def close(self) -> None:
        self._fh.close()


class _TablePartition(StatefulSourcePartition[RawBatch, tuple[int, int]]):
    """A table file (CSV, Parquet) through a :data:`TableReader`; state = (rows read, rows read).

    The state counts rows, not batches, so a resume with another ``batch_events`` continues at the
    same row: whole batches up to it are skipped and the one it falls in is cut.
    """

    def __init__(
        self, path: Path, batch_events: int, resume: tuple[int, int] | None, reader: TableReader, on_read: OnRead | None
    ) -> None:
        self._path = path
        self._name = str(path)
        self._it = reader(path, batch_events)
        self._rows = resume[1] if resume else 0
        self._on_read = on_read
        skip = self._rows
        self._pending: RawBatch | None = None
        while skip > 0:
            batch = next(self._it, None)
            if batch is None:
                break
            n = len(batch.payloads)
            if n > skip:
                self._pending = dataclasses.replace(batch, offsets=batch.offsets[skip:], payloads=batch.payloads[skip:])
            skip -= min(n, skip)

    def next_batch(self) -> list[RawBatch]:
        batch, self._pending = self._pending, None
        if batch is None:
            batch = next(self._it, None)
        if batch is None:
            if self._on_read is not None:  # a table's bytes are not read in order: count the file at its end
                self._on_read(file_bytes(self._path), False)
            raise StopIteration()
        self._rows += len(batch.payloads)
        return [dataclasses.replace(batch, source=self._name)]

    def snapshot(self) -> tuple[int, int]:
        return (self._rows, self._rows)


#: The stream (and the Bytewax partition) of every file input.
FILES_STREAM = "files"
#: Resume state of the file stream: resolved path -> (byte offset, lines read) of every file read so far.
FilesState = dict[str, tuple[int, int]]


class _FilesPartition(StatefulSourcePartition[RawBatch, FilesState]):
    """The files of a :class:`FileSource`, one after another, as one stream."""

    def __init__(
        self,
        paths: list[Path],
        batch_events: int,
        resume: FilesState | None,
        clock: Clock,
        max_line_bytes: int,
        on_read: OnRead | None = None,
        table_reader: TableReader | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._on_read = on_read
        self._table_reader = table_reader
        self._paths = paths
        self._batch = batch_events
        self._clock = clock
        self._max_line = max_line_bytes
        self._max_bytes = max_batch_bytes
        self._state: FilesState = dict(resume or {})
        self._i = 0
        self._part: _FilePartition | _TablePartition | None = None

    def next_batch(self) -> list[RawBatch]:
        if STOP_REQUESTED.is_set():
            # a graceful stop (SIGINT/SIGTERM): end here; the snapshot holds how far each file was read
            raise StopIteration()
        while self._i < len(self._paths):
            if self._part is None:
                path = self._paths[self._i]
                key = str(path.resolve())
                if is_ndjson(path) or self._table_reader is None:
                    self._part = _FilePartition(
                        path, self._batch, self._state.get(key), self._clock, self._max_line, self._on_read,
                        self._max_bytes,
                    )  # fmt: skip
                else:
                    self._part = _TablePartition(
                        path, self._batch, self._state.get(key), self._table_reader, self._on_read
                    )
            try:
                out = self._part.next_batch()
            except StopIteration:
                self._state[str(self._paths[self._i].resolve())] = self._part.snapshot()
                self._part.close()
                self._part = None
                self._i += 1
                continue
            self._state[str(self._paths[self._i].resolve())] = self._part.snapshot()
            return [dataclasses.replace(b, stream=FILES_STREAM) for b in out]
        raise StopIteration()

    def snapshot(self) -> FilesState:
        return dict(self._state)

    def close(self) -> None:
        if self._part is not None:
            self._part.close()


class FileSource(FixedPartitionedSource[RawBatch, FilesState]):
    """Event file(s) read in order as one stream; ends at the last file's end.

    NDJSON files (optionally gzip-compressed) are read line by line; table files (CSV, Parquet)
    through ``table_reader``, which turns their rows into the same NDJSON payloads. Without a
    table reader only NDJSON files are accepted.
    """

    def __init__(
        self,
        paths: list[Path],
        *,
        batch_events: int = 20_000,
        clock: Clock = time.time,
        max_line_bytes: int = MAX_LINE_BYTES,
        on_read: OnRead | None = None,
        table_reader: TableReader | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        if max_batch_bytes < 1:
            raise ValueError(f"max_batch_bytes must be >= 1, got {max_batch_bytes}")
        dirs = [str(p) for p in paths if p.is_dir()]
        if dirs:
            raise IsADirectoryError(f"input is a directory, not a file: {', '.join(dirs)} (give its files)")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"input file(s) not found: {', '.join(missing)}")
        tables = [str(p) for p in paths if not is_ndjson(p)]
        if tables and table_reader is None:
            raise ValueError(f"not NDJSON files (.jsonl, .ndjson, optionally .gz): {', '.join(tables)}")
        self._on_read = on_read
        self._table_reader = table_reader
        self._paths = {str(p): p for p in paths}
        self._batch = batch_events
        self._clock = clock
        self._max_line = max_line_bytes
        self._max_bytes = max_batch_bytes

    def list_parts(self) -> list[str]:
        return [FILES_STREAM]

    def streams(self) -> list[str]:
        """The event-time streams this source feeds (one: the files in order)."""
        return [FILES_STREAM]

    def build_part(self, step_id: str, for_part: str, resume_state: FilesState | None) -> _FilesPartition:
        return _FilesPartition(
            list(self._paths.values()), self._batch, resume_state, self._clock, self._max_line, self._on_read,
            self._table_reader, self._max_bytes,
        )  # fmt: skip


class _IterPartition(StatefulSourcePartition[RawBatch, int]):
    """Batches from a deterministic iterator factory; state = batches consumed."""

    def __init__(self, name: str, factory: Callable[[], Iterator[list[bytes]]], skip: int, clock: Clock) -> None:
        self._name = name
        self._it = factory()
        self._clock = clock
        self._done_batches = 0
        self._offset = 0
        for _ in range(skip):  # deterministic replay up to the resume point
            self._offset += len(next(self._it))
            self._done_batches += 1

    def next_batch(self) -> list[RawBatch]:
        if STOP_REQUESTED.is_set():  # a graceful stop: the snapshot holds the batches consumed so far
            raise StopIteration()
        lines = next(self._it)  # StopIteration ends the partition
        offsets = np.arange(self._offset, self._offset + len(lines), dtype=np.int64)
        self._offset += len(lines)
        self._done_batches += 1
        return [RawBatch(self._name, 0, offsets, lines, int(self._clock() * 1000))]

    def snapshot(self) -> int:
        return self._done_batches


class IteratorSource(FixedPartitionedSource[RawBatch, int]):
    """A single partition fed by a *deterministic* iterator factory (e.g. the simulator).

    Resume re-creates the iterator and skips the batches already consumed, so
    the factory must yield the same batches every time it is called.
    """

    def __init__(self, name: str, factory: Callable[[], Iterator[list[bytes]]], *, clock: Clock = time.time) -> None:
        self._name = name
        self._factory = factory
        self._clock = clock

    def list_parts(self) -> list[str]:
        return [self._name]

    def streams(self) -> list[str]:
        """The event-time streams this source feeds (its one partition)."""
        return [f"{self._name}:0"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _IterPartition:
        return _IterPartition(self._name, self._factory, resume_state or 0, self._clock)


def read_batches(
    path: Path,
    *,
    batch_events: int = 100_000,
    clock: Clock = time.time,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[RawBatch]:
    """The same batches a :class:`FileSource` would emit, outside Bytewax (offline jobs)."""
    part = _FilePartition(path, batch_events, None, clock, max_line_bytes, max_batch_bytes=max_batch_bytes)
    try:
        while True:
            try:
                yield from part.next_batch()
            except StopIteration:
                return
    finally:
        part.close()
