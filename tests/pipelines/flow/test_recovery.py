from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import CollectorRegistry

from pipelines.contract.ids import hash_strings
from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.flow.dataflow import FlowConfig, ShardLogic, build_flow
from pipelines.flow.recovery import FLOW_ID, STATE_SNAPSHOT_STEP_ID, STATE_STEP, erase_from_recovery
from pipelines.flow.runner import shard_config
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.settings import Settings
from tests.support.shards import busy_shard
from tests.support.snapshots import snapshot_diff

GONE = ["gone-a", "gone-b"]


def _keys(users: list[str]) -> np.ndarray:
    return hash_strings(np.array(users, dtype=object))


def _store(path: Path, parts: dict[int, dict[tuple[str, int], dict[str, Any]]]) -> Path:
    """A Bytewax recovery store holding ``{part: {(shard key, epoch): snapshot}}`` and a snapshot of another step."""
    path.mkdir()
    init_db_dir(path, len(parts))
    for i, snaps in parts.items():
        with sqlite3.connect(path / f"part-{i}.sqlite3") as db:
            rows = [(STATE_SNAPSHOT_STEP_ID, key, epoch, pickle.dumps(s)) for (key, epoch), s in snaps.items()]
            rows.append((f"{FLOW_ID}.events", "ev.jsonl", 1, pickle.dumps({"state": "not a shard"})))
            db.executemany("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)", rows)
    return path


def _read(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    out = {}
    for part in sorted(path.glob("part-*.sqlite3")):
        with sqlite3.connect(part) as db:
            for step, key, epoch, blob in db.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps"):
                out[(f"{part.name}:{step}", key, epoch)] = pickle.loads(blob)
    return out


def _logic_snapshot(key: str, proc: ShardProcessor) -> dict[str, Any]:
    """What the dataflow's stateful step snapshots for ``proc``."""
    return ShardLogic(key, proc, None, None, FlowConfig(), lambda: 0.0).snapshot()  # type: ignore[arg-type]


@pytest.fixture
def cfg() -> ShardConfig:
    return shard_config(Settings())


@pytest.fixture
def shards(cfg: ShardConfig) -> dict[str, ShardProcessor]:
    """Two shards; the erased users live in s0 (one with history in the ledger, one pending)."""
    return {
        "s0": busy_shard(cfg, ["keep-1", GONE[0], "keep-2", "keep-3", GONE[1], "keep-4"]),
        "s1": busy_shard(cfg, ["keep-5", "keep-6", "keep-7"]),
    }


def test_erasure_from_recovery_goes_through_shard_processor_round_trip(
    tmp_path: Path, cfg: ShardConfig, shards: dict[str, ShardProcessor]
) -> None:
    s0, s1 = shards["s0"], shards["s1"]
    gone_rows = s0.state.lookup(_keys(GONE))
    held_keys = np.concatenate([p.user_key for parts in s0._held.values() for p in parts])  # noqa: SLF001
    assert (gone_rows >= 0).all() and np.isin(_keys(GONE), held_keys).any()
    assert (s0.ledger.current[gone_rows] >= 0).all()
    old = {"s0": _logic_snapshot("s0", s0), "s1": _logic_snapshot("s1", s1)}
    # two epochs of s0 in part 0 (both are rewritten), s1 in part 1
    path = _store(tmp_path / "rec", {0: {("s0", 3): old["s0"], ("s0", 4): old["s0"]}, 1: {("s1", 4): old["s1"]}})
    before = _read(path)

    assert erase_from_recovery(path, [*GONE, "nobody"], cfg) == 2 * len(GONE)

    after = _read(path)
    assert after.keys() == before.keys()
    # the same erasure done by a live shard, snapshotted by the dataflow's own glue
    live = ShardProcessor.restore(cfg, pickle.loads(pickle.dumps(old["s0"])))
    assert live.erase(_keys(GONE)) == len(GONE)
    expected = _logic_snapshot("s0", live)
    for (where, key, epoch), snap in after.items():
        if not where.endswith(STATE_SNAPSHOT_STEP_ID) or key == "s1":
            assert snapshot_diff(before[(where, key, epoch)], snap) == []  # untouched
            continue
        assert snapshot_diff(expected, snap) == []
        proc = ShardProcessor.restore(cfg, snap)
        assert (proc.state.lookup(_keys(GONE)) == -1).all()  # the state no longer finds them
        held = [p.user_key for parts in proc._held.values() for p in parts]  # noqa: SLF001
        assert not np.isin(_keys(GONE), np.concatenate(held)).any()  # nor do their events wait for a tick
        assert not np.isin(gone_rows, proc.touched).any()
        assert (proc.ledger.given[gone_rows] == 0).all() and (proc.ledger.current[gone_rows] == -1).all()
        assert (proc.ledger.rule[gone_rows] == -1).all()
        assert set(proc.state.user_id[: proc.state.n]) == {"keep-1", "keep-2", "keep-3", "keep-4", ""}
        # every other user's arrays are as they were
        keep = np.setdiff1d(np.arange(s0.state.n), gone_rows)
        was = before[(where, key, epoch)]
        for name, a in snap["state"].items():
            if isinstance(a, np.ndarray):
                assert np.array_equal(a[keep], was["state"][name][keep]), name
        for name in ("given", "current", "rule"):
            assert np.array_equal(snap["ledger"][name][keep], was["ledger"][name][keep]), name
        assert np.array_equal(snap["touched"], np.setdiff1d(was["touched"], gone_rows))
        kept = [(t, p.user_id.tolist()) for t, p in snap["held"]]
        assert kept == [(t, [u for u in p.user_id.tolist() if u not in GONE]) for t, p in was["held"]]
        for name in ("timers", "refresh", "dedup", "frontier", "closed_ms", "taxonomy", "key"):
            assert snapshot_diff(was[name], snap[name]) == [], name


def test_erasure_writes_what_shard_processor_snapshots_not_a_hand_edited_dict(
    tmp_path: Path, cfg: ShardConfig, shards: dict[str, ShardProcessor], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _store(tmp_path / "rec", {0: {("s0", 1): _logic_snapshot("s0", shards["s0"])}})
    plain = ShardProcessor.snapshot

    def snapshot_with_a_new_part(self: ShardProcessor) -> dict[str, Any]:
        return {**plain(self), "new_part": np.arange(self.state.n)}

    monkeypatch.setattr(ShardProcessor, "snapshot", snapshot_with_a_new_part)
    assert erase_from_recovery(path, GONE[:1], cfg) == 1
    (snap,) = (s for (where, _, _), s in _read(path).items() if where.endswith(STATE_SNAPSHOT_STEP_ID))
    assert snap["key"] == "s0"
    assert np.array_equal(snap["new_part"], np.arange(shards["s0"].state.n))


def test_erasure_refuses_a_snapshot_that_restore_would_change_for_everyone(
    tmp_path: Path, shards: dict[str, ShardProcessor]
) -> None:
    path = _store(tmp_path / "rec", {0: {("s0", 1): _logic_snapshot("s0", shards["s0"])}})
    before = _read(path)
    with pytest.raises(ValueError, match="another taxonomy"):  # it would relabel every user
        erase_from_recovery(path, GONE, shard_config(Settings(taxonomy="aida-5")))
    lifecycle = shard_config(Settings())
    other_playbook = shard_config(Settings(playbook="groups-4", taxonomy="groups-4")).playbook
    with pytest.raises(ValueError, match="another playbook"):  # it would remap everyone's action history
        erase_from_recovery(path, GONE, ShardConfig(taxonomy=lifecycle.taxonomy, playbook=other_playbook))
    with pytest.raises(ValueError, match="non-empty"):
        erase_from_recovery(path, [""], lifecycle)
    with pytest.raises(ValueError, match="not a Bytewax recovery store"):
        erase_from_recovery(tmp_path, GONE, lifecycle)
    assert all(snapshot_diff(before[k], s) == [] for k, s in _read(path).items())


def test_state_snapshots_are_found_under_the_step_id_bytewax_gives_the_flows_stateful_step(tmp_path: Path) -> None:
    # the pipeline's flow: its one snapshotting step is the stateful step named by the shared constants
    flow = build_flow(
        TestingSource([]),
        sink=TestingSink([]),
        scorer=None,  # type: ignore[arg-type]
        metrics=PipelineMetrics(CollectorRegistry()),
        cfg=FlowConfig(),
        source_kind="file",
    )

    def steps(step: Any) -> list[Any]:
        subs = list(step.substeps.values() if isinstance(step.substeps, dict) else step.substeps)
        return [s for sub in subs for s in [sub, *steps(sub)]]

    stateful = [s.step_id for s in steps(flow) if type(s).__name__ == "stateful_batch"]
    assert flow.flow_id == FLOW_ID and stateful == [STATE_SNAPSHOT_STEP_ID]

    # and Bytewax stores the snapshots of such a step under that id
    class Count(StatefulLogic[int, int, int]):
        def __init__(self, n: int) -> None:
            self.n = n

        def on_item(self, value: int) -> tuple[list[int], bool]:
            self.n += value
            return [self.n], StatefulLogic.RETAIN

        def snapshot(self) -> int:
            return self.n

    probe = Dataflow(FLOW_ID)
    keyed = op.key_on("key", op.input("in", probe, TestingSource([1, 2, 3])), lambda _: "s0")
    op.output("out", op.stateful(STATE_STEP, keyed, lambda resume: Count(resume or 0)), TestingSink([]))
    rec = tmp_path / "rec"
    rec.mkdir()
    init_db_dir(rec, 1)
    run_main(probe, recovery_config=RecoveryConfig(str(rec)))
    with sqlite3.connect(rec / "part-0.sqlite3") as db:
        rows = db.execute("SELECT state_key, ser_change FROM snaps WHERE step_id = ?", (STATE_SNAPSHOT_STEP_ID,))
        assert [(k, pickle.loads(b)) for k, b in rows] == [("s0", 6)]


class _Payload:
    """What a crafted snapshot would do when unpickled: leave a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _crafted_store(tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "recovery"
    store.mkdir()
    init_db_dir(store, 1)
    marker = tmp_path / "pwned"
    with sqlite3.connect(store / "part-0.sqlite3") as db:
        db.execute(
            "INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?, ?, ?, ?)",
            (STATE_SNAPSHOT_STEP_ID, "s0", 1, pickle.dumps(_Payload(marker))),
        )
    return store, marker


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_crafted_snapshot_in_a_recovery_store_others_can_write_is_refused_unread(tmp_path: Path, mode: int) -> None:
    import os

    from pipelines.flow.recovery import UntrustedStateError

    store, marker = _crafted_store(tmp_path)
    store.chmod(mode)
    if mode & 0o020:  # group-writable: trusted only for this user's own primary group
        os.chown(store, -1, os.getegid() + 1)
    with pytest.raises(UntrustedStateError, match="writable by group or others"):
        erase_from_recovery(store, ["u1"], ShardConfig())
    assert not marker.exists()  # refused before anything was unpickled


def test_the_pipeline_refuses_to_resume_from_a_world_writable_recovery_store(tmp_path: Path) -> None:
    from pipelines.flow.recovery import UntrustedStateError
    from pipelines.flow.runner import run_pipeline
    from tests.support.events import line

    events = tmp_path / "e.jsonl"
    events.write_bytes(line() + b"\n")
    s = Settings(input=str(events), store=f"chdb://{tmp_path}/s.chdb", metrics_port=0)
    state = s.state_dir()
    assert state is not None
    run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)
    assert oct(state.stat().st_mode & 0o777) == oct(0o700)  # created private
    assert all(p.stat().st_mode & 0o077 == 0 for p in state.iterdir())
    state.chmod(0o777)
    with pytest.raises(UntrustedStateError, match="writable by group or others"):
        run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)
