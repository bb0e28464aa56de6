"""An opt-out recorded while the pipeline runs (PIPL Art. 24): the user's later events are not applied.

The consent list is re-read from the store every ``consent_refresh_seconds``; the opt-out is recorded
in the store by another writer (here: the test, between two batches), exactly as ``lifecycle consent``
would, and the real flow runs unchanged over a file.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipelines.flow.runner import run_pipeline
from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.migrations import migrate
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.privacy.erasure import set_consent
from pipelines.settings import DEFAULT_SQL, Settings

pytestmark = pytest.mark.integration

BATCH = 200


def _last_event_at(store: ChdbStore) -> dict[str, int]:
    rows = store.query("SELECT user_id, last_event_at FROM user_scores FINAL").to_pylist()
    out: dict[str, int] = {}
    for r in rows:
        at: dt.datetime = r["last_event_at"]
        out[r["user_id"]] = round(at.timestamp() * 1000)
    return out


def test_an_opt_out_recorded_mid_run_stops_applying_the_users_later_events(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(simulate(SimConfig(users=300, days=20, seed=3)).events, events)
    lines = [json.loads(line) for line in events.read_bytes().splitlines()]
    half = len(lines) // 2 // BATCH * BATCH
    # the busiest user on both sides of the middle: opted out there
    before = {e["user_id"] for e in lines[:half]}
    after = [e["user_id"] for e in lines[half:] if e["user_id"] in before]
    user = max(set(after), key=after.count)

    store = ChdbStore(tmp_path / "store.chdb")
    registry = CollectorRegistry()
    try:
        migrate(store, DEFAULT_SQL)
        read = 0

        def on_batch(n: int) -> None:
            nonlocal read
            read += n
            if read == half:  # after this batch: the next batch's refresh reads the opt-out
                set_consent(store, [user], True, "test: recorded while the pipeline runs")

        s = Settings(
            input=str(events),
            store=f"chdb://{tmp_path / 'store.chdb'}",
            metrics_port=0,
            shards=2,
            batch_events=BATCH,
            consent_refresh_seconds=1e-6,  # every batch: the test decides when the opt-out lands
        )
        run_pipeline(s, registry=registry, store=store, serve_metrics=False, on_batch=on_batch)
        got = _last_event_at(store)
    finally:
        store.close()
    newest = {}
    for i, e in enumerate(lines):
        if e["user_id"] != user or i < half:
            newest[e["user_id"]] = max(newest.get(e["user_id"], e["ts"]), e["ts"])
    assert got[user] == newest[user] < max(e["ts"] for e in lines if e["user_id"] == user)
    others = {u: t for u, t in got.items() if u != user}
    assert others == {u: t for u, t in newest.items() if u != user}  # everyone else: every event applied
    opted_out = registry.get_sample_value("lifecycle_events_opted_out_total")
    assert opted_out == sum(1 for e in lines[half:] if e["user_id"] == user)
