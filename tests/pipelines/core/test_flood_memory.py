"""A flood of 100,000 new user ids per second of event time keeps the process's memory under a stated bound.

Measured honestly: a fresh interpreter (no other test's memory in it) decodes the flood with the real
decoder and runs it through four real shard processors (the flow's shard split), one second of event
time per batch, and samples its resident set size (``VmRSS``) after every second. The first
:data:`WARMUP` seconds set the baseline: the decoder's and the allocator's working set for a batch of
100k events (about 20-30 MB, flat afterwards even when no user is admitted at all).

The bound stated: with the guard at :data:`GUARD` new users per shard and second of event time, the
five seconds of flood after the warm-up (500k new ids) grow the RSS by less than
:data:`RSS_BOUND_MB` (measured: 10-14 MB, of which about 8 MB is the allocator's noise), and the
state holds at most 4 x :data:`GUARD` users per second of flood. Without the guard (the attack) every
id takes a row and the same flood grows the RSS by about 58 MB per second of flood (measured: 232 MB
for 400k ids), without end.
"""

from __future__ import annotations

import json
import subprocess
import sys

RSS_BOUND_MB = 24
SECONDS = 8
WARMUP = 3
PER_SECOND = 100_000
GUARD = 250

_SCRIPT = r"""
import json, sys
import numpy as np
from pipelines.contract.decode import decode_batch
from pipelines.contract.events import RawBatch
from pipelines.core.retention import MemoryBounds
from pipelines.core.shard import ShardConfig, ShardProcessor
from pipelines.flow.dataflow import split_by_shard

seconds, per_second, guard = (int(a) for a in sys.argv[1:4])
T0 = 1_767_225_600_000
cfg = ShardConfig(score_interval_ms=1000, timer_bucket_ms=1000, memory=MemoryBounds(max_new_users_per_second=guard))
procs = [ShardProcessor(cfg) for _ in range(4)]

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")

tmpl = b'{"event_id":"f%d","user_id":"x%d","ts":%d,"type":"page_view","channel":"app"}'
samples, rejected, offset = [], 0, 0
for s in range(seconds):
    base = s * per_second
    payloads = [tmpl % (base + i, base + i, T0 + s * 1000 + i % 1000) for i in range(per_second)]
    raw = RawBatch("flood", 0, np.arange(offset, offset + per_second, dtype=np.int64), payloads)
    offset += per_second
    d = decode_batch(raw, now_ms=T0 + 86_400_000)
    for key, (_, sl) in split_by_shard(d, 4):
        res = procs[int(key[1:])].process(sl)
        rejected += sum(1 for r in res.rejects if r.reason.value == "new_user_rate")
    del payloads, raw, d, res
    samples.append(rss_mb())
for p in procs:  # end of input: the last second's tick is applied too
    rejected += sum(1 for r in p.flush().rejects if r.reason.value == "new_user_rate")
samples.append(rss_mb())
users = sum(p.state.users for p in procs)
state_bytes = sum(p.state.nbytes() + p.ledger.nbytes() for p in procs)
print(json.dumps({"rss": samples, "users": users, "rejected": rejected, "state_bytes": state_bytes}))
"""


def _flood(seconds: int, guard: int) -> dict:  # noqa: ANN401 - JSON
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(seconds), str(PER_SECOND), str(guard)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_the_guard_an_id_flood_takes_a_row_per_id_and_rss_grows_past_the_bound() -> None:
    got = _flood(2, 0)
    assert got["users"] == 2 * PER_SECOND  # the attack: every id is a user, state grows with the flood
    assert got["rejected"] == 0
    assert got["rss"][-1] - got["rss"][0] > RSS_BOUND_MB  # the measurement sees it


def test_a_flood_of_100k_new_ids_per_second_keeps_rss_under_the_stated_bound() -> None:
    got = _flood(SECONDS, GUARD)
    rss = got["rss"]
    growth = max(rss[WARMUP - 1 :]) - rss[WARMUP - 1]
    assert got["users"] <= 4 * GUARD * SECONDS
    assert got["rejected"] == SECONDS * PER_SECOND - got["users"]
    assert growth < RSS_BOUND_MB, f"RSS grew {growth:.1f} MB over {SECONDS} s of flood (samples {rss})"
    assert got["state_bytes"] < 8 << 20
