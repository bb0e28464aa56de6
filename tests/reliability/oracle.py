"""The reliability oracle: is what a faulted run left visible the same as what a clean run leaves?

The promise under test (README "Delivery guarantee"): every input event is applied
once to user state, or is a dead letter with a reason; after any crash and resume,
the visible scores (under ``FINAL``) equal those of an uninterrupted run.

What the oracle compares, per user, between a faulted run and a reference run of
the same events without faults:

* ``user_scores FINAL``: every column, read from the table's own description, so a
  column added by a later migration is compared without touching this file; only
  the wall-clock columns in :data:`WALL_CLOCK_COLUMNS` are left out (they record
  *when* a row was written, which differs by construction).
* ``stage_transitions FINAL`` and ``rejected_events FINAL`` the same way.
* no user missing or extra, and no visible duplicate: ``count() = uniqExact(user_id)``
  under ``FINAL``.

And conservation, from two independent sides:

* the pipeline's own counters (``--summary-json`` or a scrape of ``/metrics``):
  events in = applied + duplicates + opted out + dead letters;
* the stores: dead-letter rows = dead letters counted, rows in ``user_scores`` =
  distinct users of the applied events.

The soak runner (:mod:`tests.reliability.soak`) uses the same functions.
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.io.store.base import Store
from pipelines.io.store.chdb import ChdbStore

#: Columns that record wall-clock time of writing, not content: never compared.
WALL_CLOCK_COLUMNS: Mapping[str, frozenset[str]] = {
    "user_scores": frozenset({"scored_at"}),
    "stage_transitions": frozenset({"inserted_at"}),
    "rejected_events": frozenset({"received_at"}),
}
#: Tables compared under FINAL, with the key columns that order them (the rest follow in table order).
TABLE_KEYS: Mapping[str, tuple[str, ...]] = {
    "user_scores": ("user_id",),
    "stage_transitions": ("user_id", "at", "to_stage"),
    "rejected_events": ("source", "partition", "offset", "reason"),
}


@dataclass(frozen=True, slots=True)
class Visible:
    """What a run left visible in the store: each compared table under FINAL, as rows."""

    tables: Mapping[str, list[dict[str, Any]]]
    #: ``user_scores FINAL``: count() and uniqExact(user_id)
    score_rows: int
    score_users: int
    #: ``rejected_events`` rows without FINAL: a replayed dead letter shows here before merges
    dead_letter_rows_raw: int

    @property
    def scores(self) -> list[dict[str, Any]]:
        return list(self.tables["user_scores"])

    @property
    def dead_letters(self) -> int:
        return len(self.tables["rejected_events"])


def compared_columns(store: Store, table: str) -> list[str]:
    """Every column of ``table`` (from ``DESCRIBE``) except its wall-clock ones."""
    names = store.query(f"DESCRIBE TABLE {table}").column("name").to_pylist()
    return [n for n in names if n not in WALL_CLOCK_COLUMNS.get(table, frozenset())]


def capture(store: Store) -> Visible:
    """Read what ``store`` shows now (the pipeline writing to it must be stopped or caught up)."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, keys in TABLE_KEYS.items():
        cols = compared_columns(store, table)
        order = ", ".join(keys + tuple(c for c in cols if c not in keys))
        sql = f"SELECT {', '.join(cols)} FROM {table} FINAL ORDER BY {order}"
        tables[table] = store.query(sql).to_pylist()
    counts = store.query("SELECT count() AS n, uniqExact(user_id) AS u FROM user_scores FINAL").to_pylist()[0]
    raw = store.query("SELECT count() AS n FROM rejected_events").to_pylist()[0]["n"]
    return Visible(tables, int(counts["n"]), int(counts["u"]), int(raw))


def capture_chdb(path: Path) -> Visible:
    """:func:`capture` of an embedded store directory, opened and closed here (chDB: one process at a time)."""
    store = ChdbStore(path)
    try:
        return capture(store)
    finally:
        store.close()


# --------------------------------------------------------------------------- counters


@dataclass(slots=True)
class Counters:
    """The pipeline's own counts of one run (or the sum of several that neither lost nor repeated)."""

    events_in: int = 0
    applied: int = 0
    duplicates: int = 0
    opted_out: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    #: events read by an earlier run and restored with its state (waiting for their tick), applied in this one
    resumed: int = 0

    @property
    def dead_letters(self) -> int:
        return sum(self.rejected.values())

    @property
    def accounted(self) -> int:
        return self.applied + self.duplicates + self.opted_out + self.dead_letters

    def __add__(self, other: Counters) -> Counters:
        rejected = dict(self.rejected)
        for k, v in other.rejected.items():
            rejected[k] = rejected.get(k, 0) + v
        return Counters(
            self.events_in + other.events_in,
            self.applied + other.applied,
            self.duplicates + other.duplicates,
            self.opted_out + other.opted_out,
            rejected,
            self.resumed + other.resumed,
        )

    @classmethod
    def from_summary(cls, path: Path) -> Counters:
        """From the JSON that ``lifecycle run --summary-json PATH`` writes at the end of a run."""
        data = json.loads(path.read_text())
        return cls(
            int(data["events_in"]),
            int(data["events_applied"]),
            int(data["duplicates"]),
            int(data["opted_out"]),
            {k: int(v) for k, v in data["rejected"].items() if v},
            int(data.get("events_resumed", 0)),
        )

    @classmethod
    def from_metrics(cls, text: str) -> Counters:
        """From a Prometheus text exposition of the pipeline's ``/metrics``."""
        samples = parse_metrics(text)
        rejected: dict[str, int] = {}
        for labels, value in samples.get("lifecycle_events_rejected_total", []):
            if value:
                rejected[labels["reason"]] = rejected.get(labels["reason"], 0) + int(value)
        return cls(
            int(sum(v for _, v in samples.get("lifecycle_events_in_total", []))),
            int(sum(v for _, v in samples.get("lifecycle_events_applied_total", []))),
            int(sum(v for _, v in samples.get("lifecycle_events_duplicate_total", []))),
            int(sum(v for _, v in samples.get("lifecycle_events_opted_out_total", []))),
            rejected,
            int(sum(v for _, v in samples.get("lifecycle_events_resumed_total", []))),
        )


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def scrape(port: int, *, timeout_s: float = 2.0) -> str | None:
    """The text of ``http://127.0.0.1:PORT/metrics``, or None while the endpoint is not up."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def kafka_lag(text: str) -> float | None:
    """Sum of ``lifecycle_kafka_consumer_lag`` over partitions (None before the first report)."""
    values = [v for _, v in parse_metrics(text).get("lifecycle_kafka_consumer_lag", [])]
    return sum(values) if values else None


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class Expected:
    """What the input says a correct run must show (when the test knows it)."""

    events: int | None = None  # events in the input
    dead_letters: int | None = None  # events that must become dead letters
    users: int | None = None  # distinct users of the events that are applied


def check_conservation(counters: Counters, expected: Expected | None = None) -> list[str]:
    """Problems with the pipeline's own counts (empty: none)."""
    problems: list[str] = []
    if counters.events_in + counters.resumed != counters.accounted:
        problems.append(
            f"counters do not conserve events: in={counters.events_in} + resumed={counters.resumed} but "
            f"applied={counters.applied} + "
            f"duplicates={counters.duplicates} + opted_out={counters.opted_out} + "
            f"dead letters={counters.dead_letters} ({counters.rejected}) = {counters.accounted}"
        )
    if expected is not None and expected.events is not None and counters.events_in != expected.events:
        problems.append(f"counters read {counters.events_in} events, the input has {expected.events}")
    if expected is not None and expected.dead_letters is not None and counters.dead_letters != expected.dead_letters:
        problems.append(f"counters show {counters.dead_letters} dead letters, expected {expected.dead_letters}")
    return problems


def check_store(visible: Visible, expected: Expected | None = None, counters: Counters | None = None) -> list[str]:
    """Problems with one store on its own: duplicates under FINAL, users and dead letters vs the input."""
    problems: list[str] = []
    if visible.score_rows != visible.score_users:
        problems.append(
            f"user_scores FINAL shows {visible.score_rows} rows for {visible.score_users} users (visible duplicates)"
        )
    if expected is not None and expected.users is not None and visible.score_users != expected.users:
        problems.append(f"user_scores FINAL has {visible.score_users} users, the applied events have {expected.users}")
    if expected is not None and expected.dead_letters is not None and visible.dead_letters != expected.dead_letters:
        problems.append(f"rejected_events FINAL has {visible.dead_letters} rows, expected {expected.dead_letters}")
    if counters is not None and visible.dead_letters != counters.dead_letters:
        problems.append(
            f"rejected_events FINAL has {visible.dead_letters} rows, the counters {counters.dead_letters} dead letters"
        )
    return problems


def diff_visible(actual: Visible, reference: Visible, *, limit: int = 5) -> list[str]:
    """Per-user differences of every compared table (empty: equal)."""
    problems: list[str] = []
    for table, keys in TABLE_KEYS.items():
        got, ref = actual.tables[table], reference.tables[table]
        if got == ref:
            continue
        by_user_got = _group(got, keys[0])
        by_user_ref = _group(ref, keys[0])
        missing = sorted(set(by_user_ref) - set(by_user_got), key=str)
        extra = sorted(set(by_user_got) - set(by_user_ref), key=str)
        differ = [k for k in by_user_ref if k in by_user_got and not _same_rows(by_user_ref[k], by_user_got[k])]
        if not (missing or extra or differ) and len(got) == len(ref):
            continue  # equal, floats to FLOAT_REL_TOL
        head = f"{table}: {len(got)} rows vs {len(ref)} in the reference"
        problems.append(
            f"{head}; {len(missing)} {keys[0]}(s) missing {missing[:limit]}, {len(extra)} extra {extra[:limit]}, "
            f"{len(differ)} differ"
        )
        for k in differ[:limit]:
            problems.append(f"  {table} {keys[0]}={k!r}: got {_cols_diff(by_user_got[k], by_user_ref[k])}")
    return problems


#: Float columns compared to this relative tolerance, all others exactly. A stop inside an event-time tick
#: (SIGTERM, end of a load) applies that tick's events at the stop, and the rest when the tick closes in
#: the resumed run: the decayed window sums of a user with events on both sides round by an ulp
#: differently than when the whole tick is applied at once (docs/event-time.md). Everything else is exact.
FLOAT_REL_TOL = 1e-6


def _same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        if ra.keys() != rb.keys():
            return False
        for c, va in ra.items():
            vb = rb[c]
            if isinstance(va, float) and isinstance(vb, float):
                if not math.isclose(va, vb, rel_tol=FLOAT_REL_TOL, abs_tol=1e-9):
                    return False
            elif va != vb:
                return False
    return True


def _group(rows: Iterable[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return out


def _cols_diff(got: list[dict[str, Any]], ref: list[dict[str, Any]]) -> str:
    if len(got) != len(ref):
        return f"{len(got)} rows, reference {len(ref)}: {got[:3]} vs {ref[:3]}"
    parts = []
    for g, r in zip(got, ref, strict=True):
        parts += [f"{c}={g[c]!r} (reference {r[c]!r})" for c in r if g.get(c) != r[c]]
    return "; ".join(parts[:8])


def assert_equivalent(
    actual: Visible,
    reference: Visible,
    *,
    expected: Expected | None = None,
    counters: Counters | None = None,
) -> None:
    """Fail with every difference found: the faulted run's store vs the reference, and vs the input."""
    problems = diff_visible(actual, reference)
    problems += [f"faulted run: {p}" for p in check_store(actual, expected)]
    problems += [f"reference: {p}" for p in check_store(reference, expected)]
    if counters is not None:
        problems += check_conservation(counters, expected)
    assert not problems, "delivery guarantee broken:\n" + "\n".join(problems)
