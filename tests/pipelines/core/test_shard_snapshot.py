from __future__ import annotations

import pickle

import pytest

from pipelines.core.shard import ShardProcessor
from pipelines.flow.runner import shard_config
from pipelines.settings import Settings
from tests.support.shards import busy_shard
from tests.support.snapshots import snapshot_diff


@pytest.mark.parametrize("taxonomy", ["lifecycle-5", "aida-5", "groups-4"])
def test_restore_then_snapshot_round_trips_a_snapshot_unchanged(taxonomy: str) -> None:
    # what makes erasure in a recovery store (restore, erase, snapshot) leave every other user as it was
    cfg = shard_config(Settings(taxonomy=taxonomy))
    snap = pickle.loads(pickle.dumps(busy_shard(cfg, [f"u{i}" for i in range(40)]).snapshot()))
    again = ShardProcessor.restore(cfg, snap).snapshot()
    assert snapshot_diff(snap, again) == []
    assert snapshot_diff(snap, ShardProcessor.restore(cfg, again).snapshot()) == []
