"""The dataflow in-process, with an in-memory source and sink (bytewax's testing harness): no engine needed.

``build_flow`` takes its sink as an argument, so the whole flow - decode, shard, state,
score, label, dead letters - runs against ``TestingSink`` and the rows it would write are
checked directly, without ClickHouse.
"""

from __future__ import annotations

import numpy as np
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import CollectorRegistry

from pipelines.contract.events import RawBatch
from pipelines.core.rows import Records
from pipelines.flow.dataflow import FlowConfig, build_flow
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import iter_ndjson_batches
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer

BAD_LINE = b'{"event_id": "x", "user_id": '


def _batches(events, batch_rows: int) -> list[RawBatch]:  # noqa: ANN001
    out, line = [], 1
    for payloads in iter_ndjson_batches(events, batch_rows):
        offsets = np.arange(line, line + len(payloads), dtype=np.int64)
        out.append(RawBatch("mem", 0, offsets, payloads))
        line += len(payloads)
    # one malformed line at the end, at the next position
    out.append(RawBatch("mem", 0, np.array([line], np.int64), [BAD_LINE]))
    return out


def _run(batches: list[RawBatch], shards: int) -> list[Records]:
    written: list[tuple[str, Records]] = []
    flow = build_flow(
        TestingSource(batches),
        sink=TestingSink(written),
        scorer=Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu"),
        metrics=PipelineMetrics(CollectorRegistry()),
        cfg=FlowConfig(shards=shards),
        source_kind="memory",
        clock=lambda: 1_800_000_000.0,
    )
    run_main(flow)
    assert {key for key, _ in written} == {"store"}
    return [r for _, r in written]


@pytest.fixture(scope="module")
def sim():  # noqa: ANN201
    return simulate(SimConfig(users=150, days=6, seed=2))


@pytest.mark.parametrize("shards", [1, 3])
def test_the_flow_runs_in_memory_and_writes_every_user_and_every_dead_letter(sim, shards: int) -> None:  # noqa: ANN001
    events = sim.events
    batches = _batches(events, 400)
    records = _run(batches, shards)
    tables = {r.table for r in records}
    assert tables == {"user_scores", "stage_transitions", "rejected_events"}
    scored = {u for r in records if r.table == "user_scores" for u in r.data.column("user_id").to_pylist()}
    assert scored == set(events["user_id"].to_list())  # every user who sent a valid event is scored
    rejects = [row for r in records if r.table == "rejected_events" for row in r.data.to_pylist()]
    assert len(rejects) == 1
    assert rejects[0]["offset"] == batches[-1].offsets[0] and rejects[0]["payload"] == BAD_LINE
    assert rejects[0]["reason"] == "malformed_json"
    # a user's first transition is from "none"; every later one starts where the previous ended
    last: dict[str, str] = {}
    for r in records:
        if r.table == "stage_transitions":
            for row in r.data.to_pylist():
                assert row["from_stage"] == last.get(row["user_id"], "none")
                last[row["user_id"]] = row["to_stage"]
