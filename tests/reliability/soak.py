"""Soak: a randomized schedule of faults against a live Kafka run, checked by the reliability oracle.

``make soak`` (``python -m tests.reliability.soak``) runs for ``SOAK_SECONDS``
(default 600) against a tansu broker with persistent storage. The stream is
produced while the pipeline runs, in chunks aligned to the source's batch size
(so a live read cuts the same batches as a reader of the finished topic, and the
result is comparable with a reference run). Between chunks it injects, at random
and at progress points (after a random number of committed epochs):

* ``kill9``: SIGKILL the pipeline, restart it from the recovery store;
* ``sigterm``: SIGTERM (graceful drain), check it exited 143 (drained), restart it;
* ``broker_restart``: SIGKILL the broker, wait while the pipeline runs epochs
  without it, restart the broker on the same address.

At the end it produces what is left, waits until the pipeline is caught up (lag 0),
stops it with SIGTERM, checks that a resume reads nothing more, runs the reference
(the whole topic, no faults) and compares with :func:`tests.reliability.oracle`.
It prints one JSON object (faults injected, events, checks passed) and exits 1 if
any check failed. ``SOAK_SEED`` fixes the schedule, ``SOAK_USERS`` / ``SOAK_DAYS``
the stream size.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.io.kafka.producer import produce_lines
from tests.reliability.fake_s3 import fake_s3
from tests.reliability.harness import Pipeline, free_port, make_stream, run_args
from tests.reliability.oracle import (
    Counters,
    capture_chdb,
    check_conservation,
    check_store,
    diff_visible,
    kafka_lag,
    scrape,
)
from tests.reliability.persistent_broker import PersistentBroker
from tests.support.recovery import committed_epoch

BATCH = 1000
CHUNK = 5 * BATCH
_ATOMIC = {"linger.ms": 60_000, "batch.num.messages": 100_000}
FAULTS = ("kill9", "sigterm", "broker_restart")


def _epoch_at_least(recovery: Path, epoch: int) -> Callable[[], bool]:
    return lambda: committed_epoch(recovery) >= epoch


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def soak(seconds: float, *, seed: int, users: int, days: int, workdir: Path) -> dict[str, Any]:
    """Run the soak; return its summary (``summary["ok"]`` is whether every check passed)."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    stream = make_stream(users=users, days=days, seed=seed)
    chunks = [stream.lines[i : i + CHUNK] for i in range(0, len(stream.lines), CHUNK)]
    store, recovery = workdir / "store.chdb", workdir / "recovery"
    faults: Counter[str] = Counter()
    problems: list[str] = []
    runs = 0
    with fake_s3() as s3, PersistentBroker(s3, workdir / "tansu.log") as broker:
        topic = broker.create_topic("soak-events")
        url = f"kafka://{broker.bootstrap}/{topic}"
        args = run_args(url, f"chdb://{store}", recovery=recovery, batch_events=BATCH, epoch_seconds=0.5)
        port = free_port()
        produced = 0

        def produce_next() -> None:
            nonlocal produced
            if produced < len(chunks):
                produce_lines(broker.bootstrap, topic, chunks[produced], config=_ATOMIC)
                produced += 1

        def start() -> Pipeline:
            nonlocal runs
            runs += 1
            return Pipeline(args, workdir=workdir / "runs", metrics_port=port, summary=True)

        produce_next()
        pipe = start()
        # spread the chunks over the duration, leaving a fifth of it for the end
        per_fault = max(1.0, 0.8 * seconds / max(1, len(chunks)))
        while time.monotonic() - t0 < 0.8 * seconds or produced < len(chunks):
            target = committed_epoch(recovery) + rng.randint(1, 4)
            if not pipe.until(_epoch_at_least(recovery, target), timeout_s=300):
                problems.append(f"run {runs} ended by itself (exit {pipe.proc.returncode}): {pipe.log(1500)}")
                pipe = start()
                continue
            for _ in range(rng.randint(1, 3)):
                produce_next()
            fault = rng.choice(FAULTS)
            faults[fault] += 1
            if fault == "kill9":
                pipe.kill9()
                pipe = start()
            elif fault == "sigterm":
                pipe.sigterm()
                if pipe.wait(180) != 143:  # 143: drained on SIGTERM (docs/operations.md, exit codes)
                    problems.append(f"run {runs}: SIGTERM did not drain cleanly (exit {pipe.proc.returncode})")
                pipe = start()
            else:
                broker.kill()
                outage_end = committed_epoch(recovery) + rng.randint(2, 8)  # epochs run without a broker
                pipe.until(_epoch_at_least(recovery, outage_end), timeout_s=120)
                broker.start()
                if not pipe.alive():
                    problems.append(f"run {runs} died during a broker outage: {pipe.log(1500)}")
                    pipe = start()
            time.sleep(min(per_fault, 0.2))

        def caught_up() -> bool:
            text = scrape(port)
            return text is not None and kafka_lag(text) == 0 and committed_epoch(recovery) > 0

        pipe.until(caught_up, timeout_s=600, what="catching up at the end")
        time.sleep(1.0)  # let the last batch's epoch commit
        pipe.sigterm()
        if pipe.wait(180) != 143:
            problems.append(f"final SIGTERM did not drain cleanly (exit {pipe.proc.returncode})")
        # a resume now must read nothing: the committed offsets are exactly the end of the topic
        check = Pipeline(args, workdir=workdir / "runs", env={"LIFECYCLE_KAFKA_EOF_EXIT": "true"})
        after = check.finish()
        if after is None or after.events_in != 0:
            problems.append(f"a resume after the final stop read {after and after.events_in} events (expected 0)")
        ref_store = workdir / "reference.chdb"
        ref = Pipeline(
            run_args(url, f"chdb://{ref_store}", batch_events=BATCH),
            workdir=workdir / "reference",
            env={"LIFECYCLE_KAFKA_EOF_EXIT": "true"},
        ).finish()
    visible, reference = capture_chdb(store), capture_chdb(ref_store)
    problems += diff_visible(visible, reference)
    problems += check_store(visible, stream.expected)
    problems += [f"reference: {p}" for p in check_store(reference, stream.expected, ref)]
    problems += check_conservation(ref or Counters(), stream.expected)
    return {
        "ok": not problems,
        "seconds": round(time.monotonic() - t0, 1),
        "seed": seed,
        "events": len(stream.lines),
        "users": stream.expected.users,
        "dead_letters": len(stream.bad),
        "duplicates": stream.duplicates,
        "faults": dict(faults),
        "faults_total": sum(faults.values()),
        "pipeline_runs": runs,
        "checks": {
            "equal_to_reference": not diff_visible(visible, reference),
            "no_visible_duplicates": visible.score_rows == visible.score_users,
            "users_and_dead_letters_match_input": not check_store(visible, stream.expected),
            "resume_after_stop_reads_nothing": after is not None and after.events_in == 0,
        },
        "problems": problems[:20],
    }


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "600"))
    seed = _env_int("SOAK_SEED", int(time.time()) % 100_000)
    workdir = Path(tempfile.mkdtemp(prefix="lifecycle-soak-"))
    try:
        summary = soak(
            seconds, seed=seed, users=_env_int("SOAK_USERS", 20_000), days=_env_int("SOAK_DAYS", 30), workdir=workdir
        )
    finally:
        if os.environ.get("SOAK_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
