"""What a pipeline run left visible in a store, for comparing a faulted run with a clean one.

Tables are read under ``FINAL`` with every column (from ``DESCRIBE``, so a column
added by a later migration is compared too) except those that record the wall-clock
time of writing, which differ between two runs by construction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from pipelines.io.store.base import Store

#: Columns that record when a row was written, not what it says.
WALL_CLOCK_COLUMNS: Mapping[str, frozenset[str]] = {
    "user_scores": frozenset({"scored_at"}),
    "stage_transitions": frozenset({"inserted_at"}),  # DEFAULT now64(3): when the row arrived
    "rejected_events": frozenset({"received_at"}),
}
#: Order of each table's rows (key columns first; the rest follow in table order).
TABLE_KEYS: Mapping[str, tuple[str, ...]] = {
    "user_scores": ("user_id",),
    "stage_transitions": ("user_id", "at", "to_stage"),
    "rejected_events": ("source", "partition", "offset", "reason"),
}


def final_rows(store: Store, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` under ``FINAL``, without its wall-clock columns, in key order."""
    names = store.query(f"DESCRIBE TABLE {table}").column("name").to_pylist()
    cols = [n for n in names if n not in WALL_CLOCK_COLUMNS.get(table, frozenset())]
    keys = TABLE_KEYS.get(table, ())
    order = ", ".join(f"`{c}`" for c in (*keys, *(c for c in cols if c not in keys)))
    return store.query(f"SELECT {', '.join(f'`{c}`' for c in cols)} FROM {table} FINAL ORDER BY {order}").to_pylist()


def scalar(store: Store, sql: str) -> int:
    """The single integer a ``SELECT ... AS n`` query returns."""
    return int(store.query(sql).column("n").to_pylist()[0])


def sample(registry: CollectorRegistry, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples called ``name`` (whose labels include ``labels``) in ``registry`` now."""
    want = dict(labels or {})
    return sum(
        s.value
        for fam in registry.collect()
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in want.items())
    )


def conservation(registry: CollectorRegistry) -> tuple[int, int]:
    """(events in, applied + duplicates + opted out + dead letters) from the pipeline's own counters."""
    accounted = sum(
        sample(registry, n)
        for n in (
            "lifecycle_events_applied_total",
            "lifecycle_events_duplicate_total",
            "lifecycle_events_opted_out_total",
            "lifecycle_events_rejected_total",
        )
    )
    return int(sample(registry, "lifecycle_events_in_total")), int(accounted)
