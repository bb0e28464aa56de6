"""The memory bounds in the real dataflow: dead letters cut to their bound, the id-flood guard counted (issue 19, 9)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import CollectorRegistry

from pipelines.contract.events import RawBatch
from pipelines.core.retention import MemoryBounds
from pipelines.core.rows import Records
from pipelines.core.shard import ShardConfig
from pipelines.flow.dataflow import FlowConfig, build_flow
from pipelines.monitoring.metrics import PipelineMetrics
from tests.support.memflow import WALL, scorer

T0 = 1_767_225_600_000


def _run(payloads: list[bytes], cfg: FlowConfig) -> tuple[list[Records], CollectorRegistry]:
    registry = CollectorRegistry()
    written: list[tuple[str, Records]] = []
    batch = RawBatch("mem", 0, np.arange(len(payloads), dtype=np.int64), payloads, 0)
    flow = build_flow(
        TestingSource([batch]),
        sink=TestingSink(written),
        scorer=scorer(),
        metrics=PipelineMetrics(registry),
        cfg=cfg,
        source_kind="memory",
        clock=lambda: WALL,
    )
    run_main(flow)
    return [r for _, r in written], registry


def _rejected(records: list[Records]) -> pa.Table:
    return pa.concat_tables([r.data for r in records if r.table == "rejected_events"])


def test_a_dead_letter_in_the_store_keeps_at_most_max_dead_letter_bytes_of_its_payload() -> None:
    broken = b'{"event_id":"e1","user_id":"u1",' + b'"x":"' + b"y" * 20_000  # malformed, 20 KB
    records, _ = _run([broken], FlowConfig(shards=2, max_dead_letter_bytes=1000))
    rej = _rejected(records).to_pylist()
    assert len(rej) == 1
    assert rej[0]["payload"] == broken[:1000]
    assert f"of {len(broken)} bytes" in rej[0]["detail"]


def test_an_id_flood_becomes_new_user_rate_dead_letters_counted_by_reason_with_state_held_to_the_guard() -> None:
    tmpl = b'{"event_id":"e%d","user_id":"x%d","ts":%d,"type":"page_view","channel":"app"}'
    flood = [tmpl % (i, i, T0 + i % 1000) for i in range(3000)]  # 3,000 new ids in one second of event time
    shard = ShardConfig(memory=MemoryBounds(max_new_users_per_second=100))
    records, registry = _run(flood, FlowConfig(shards=2, shard=shard))
    reasons = _rejected(records).column("reason").to_pylist()
    assert reasons == ["new_user_rate"] * (3000 - 2 * 100)
    counted = registry.get_sample_value("lifecycle_events_rejected_total", {"reason": "new_user_rate"})
    assert counted == 3000 - 2 * 100
    held = sum(registry.get_sample_value("lifecycle_users_in_state", {"shard": s}) or 0 for s in ("s0", "s1"))
    assert held == 2 * 100
    scored = pa.concat_tables([r.data for r in records if r.table == "user_scores"]).column("user_id").to_pylist()
    assert len(set(scored)) == 200
