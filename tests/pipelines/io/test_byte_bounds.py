"""Source batches and dead letters are bounded in bytes, not only in counts (issue 19, finding 9).

A batch of 20,000 lines of up to 64 KiB was 1.3 GB; a dead letter kept its whole payload for 90 days.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.contract.events import Rejection, RejectReason, bound_dead_letters
from pipelines.io.files import FileSource, read_batches


def _file(tmp_path: Path, n: int, pad: int) -> tuple[Path, list[bytes]]:
    lines = [json.dumps({"i": i, "pad": "x" * pad}).encode() for i in range(n)]
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


def test_a_file_batch_of_long_lines_ends_at_the_byte_bound(tmp_path: Path) -> None:
    path, lines = _file(tmp_path, 400, 10_000)
    unbounded = list(read_batches(path, batch_events=20_000, max_batch_bytes=1 << 40))
    assert len(unbounded) == 1  # the attack: the count bound alone puts all 4 MB in one batch
    limit = 256 << 10
    batches = list(read_batches(path, batch_events=20_000, max_batch_bytes=limit))
    assert [p for b in batches for p in b.payloads] == lines  # every line once, in order
    assert [int(o) for b in batches for o in b.offsets] == list(range(1, 401))
    assert max(sum(map(len, b.payloads)) for b in batches) < limit + 10_100  # plus the line that reached it


def test_a_file_source_resumed_after_a_byte_cut_reads_on_from_the_next_line(tmp_path: Path) -> None:
    path, lines = _file(tmp_path, 100, 10_000)
    src = FileSource([path], batch_events=20_000, max_batch_bytes=100_000)
    part = src.build_part("events", "files", None)
    first = part.next_batch()[0]
    state = part.snapshot()
    part.close()
    assert len(first.payloads) == 10
    resumed = src.build_part("events", "files", state)
    rest: list[bytes] = []
    try:
        while True:
            rest += [p for b in resumed.next_batch() for p in b.payloads]
    except StopIteration:
        pass
    resumed.close()
    assert list(first.payloads) + rest == lines


def test_a_dead_letter_keeps_at_most_the_bounded_prefix_of_its_payload_and_says_so() -> None:
    big = Rejection(RejectReason.MALFORMED_JSON, "in.jsonl", -1, 7, b"{" * 60_000, "bad")
    small = Rejection(RejectReason.LATE, "in.jsonl", -1, 8, b"{}", "")
    got = bound_dead_letters([big, small], 4096)
    assert got[0].payload == b"{" * 4096
    assert got[0].detail == "bad (payload cut to its first 4096 of 60000 bytes)"
    assert (got[0].reason, got[0].position) == (big.reason, big.position)
    assert got[1] is small
    assert bound_dead_letters([big], 0) == [big]  # 0: whole payloads
