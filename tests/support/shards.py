"""A shard with something in every part of its snapshot: users, held events, timers, dedup, action history."""

from __future__ import annotations

import numpy as np

from pipelines.contract.ids import hash_strings
from pipelines.core.shard import ShardConfig, ShardProcessor
from tests.support.events import DAY_MS, T0, columns


def busy_shard(cfg: ShardConfig, users: list[str]) -> ShardProcessor:
    """``users`` applied, scored, some events still waiting for their tick, each with a granted action in the ledger."""
    proc = ShardProcessor(cfg)
    proc.process(columns([(u, T0 + i * 60_000, "page_view") for i, u in enumerate(users)]))
    proc.process(columns([(u, T0 + DAY_MS + i, "order", 10.0 + i) for i, u in enumerate(users)]))
    # a few seconds later: these events wait for their tick to close (held)
    proc.process(columns([(u, T0 + DAY_MS + 5_000 + i, "add_to_cart") for i, u in enumerate(users[::2])]))
    rows = proc.state.lookup(hash_strings(np.array(users, dtype=object)))
    led = proc.ledger
    led.ensure(proc.state.n)
    k = len(led.actions)
    led.given[rows, np.arange(rows.shape[0]) % k] = (T0 + DAY_MS) // 1000
    led.current[rows] = (np.arange(rows.shape[0]) % k).astype(np.int8)
    led.rule[rows] = 0
    led.day, led.used[:] = (T0 + DAY_MS) // DAY_MS, 1
    assert proc.held_events() > 0 and proc.timers.snapshot()["buckets"], "the shard should be busy"
    return proc
