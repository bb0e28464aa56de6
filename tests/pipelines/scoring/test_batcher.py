"""Dynamic micro-batching: both limits (rows, queue delay) honoured; results split back per request, in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.scoring.batcher import (
    DEVICE_DEFAULTS,
    BatcherClosedError,
    BatchPolicy,
    BatchQueue,
    DynamicBatcher,
    chunk_bounds,
    deliver,
    fail,
)

F = 3


def rows(n: int, start: int = 0) -> np.ndarray:
    """n rows whose first column numbers them (start, start+1, ...): results can be traced back."""
    x = np.zeros((n, F), np.float32)
    x[:, 0] = np.arange(start, start + n)
    return x


def take(r: np.ndarray, a: int, b: int) -> np.ndarray:
    return r[a:b]


def concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(list(parts))


def test_a_full_batch_is_released_at_max_rows_before_the_delay_and_never_exceeds_it() -> None:
    q: BatchQueue[np.ndarray] = BatchQueue(BatchPolicy(max_rows=100, max_delay_s=0.002))
    q.push(rows(60), now=0.0)
    assert not q.ready(0.0)
    q.push(rows(50, 60), now=0.0005)
    assert q.ready(0.0005)  # 110 rows waiting: due at once, long before 2 ms
    batch = q.pop(0.0005)
    assert batch is not None and batch.rows == 100 and batch.oldest == 0.0
    np.testing.assert_array_equal(batch.features()[:, 0], np.arange(100))
    # the 10 rows left belong to the second request: due at its own deadline (0.5 ms + 2 ms)
    assert q.queued_rows == 10
    assert not q.ready(0.0024)
    assert q.ready(0.0025)
    rest = q.pop(0.0025)
    assert rest is not None and rest.rows == 10 and rest.oldest == 0.0005


def test_a_lone_request_waits_at_most_max_queue_delay() -> None:
    q: BatchQueue[np.ndarray] = BatchQueue(BatchPolicy(max_rows=4096, max_delay_s=0.002))
    q.push(rows(5), now=10.0)
    assert q.deadline() == pytest.approx(10.002)
    assert q.pop(10.0019) is None  # not full, not yet due
    batch = q.pop(10.002)
    assert batch is not None and batch.rows == 5
    assert q.pop(20.0) is None and len(q) == 0


def test_zero_delay_releases_every_request_at_once() -> None:
    q: BatchQueue[np.ndarray] = BatchQueue(BatchPolicy(max_rows=10, max_delay_s=0.0))
    q.push(rows(1), now=5.0)
    assert q.ready(5.0)


def test_a_request_larger_than_max_rows_spans_batches_and_comes_back_whole() -> None:
    q: BatchQueue[np.ndarray] = BatchQueue(BatchPolicy(max_rows=4, max_delay_s=1.0))
    req = q.push(rows(10), now=0.0)
    sizes = []
    while (b := q.pop(0.0)) is not None:
        sizes.append(b.rows)
        deliver(b, b.features() * 2, take=take, concat=concat)
    assert sizes == [4, 4]  # the last 2 rows are not due yet: not full, oldest has not waited 1 s
    assert not req.future.done()
    last = q.pop(1.0)
    assert last is not None and last.rows == 2
    deliver(last, last.features() * 2, take=take, concat=concat)
    np.testing.assert_array_equal(req.future.result(), rows(10) * 2)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=25),
    gaps=st.lists(st.floats(0.0, 0.004), min_size=25, max_size=25),
    max_rows=st.integers(1, 64),
)
def test_any_arrival_pattern_respects_both_limits_and_every_request_gets_its_own_rows(
    sizes: list[int], gaps: list[float], max_rows: int
) -> None:
    delay = 0.002
    q: BatchQueue[np.ndarray] = BatchQueue(BatchPolicy(max_rows, delay))
    reqs, now, start = [], 0.0, 0
    released: list[tuple[float, float]] = []  # (release time, oldest)

    def drain(t: float) -> None:
        while (b := q.pop(t)) is not None:
            assert b.rows <= max_rows
            released.append((t, b.oldest))
            deliver(b, b.features().copy(), take=take, concat=concat)

    def advance(t: float) -> None:
        # a worker wakes at every deadline on the way (DynamicBatcher waits on the condition until then)
        while (d := q.deadline()) is not None and d <= t:
            drain(d)
        drain(t)

    for n, gap in zip(sizes, gaps, strict=False):
        now += gap
        advance(now)
        reqs.append((q.push(rows(n, start), now), start, n))
        start += n
        drain(now)
    advance(now + delay)
    assert q.queued_rows == 0
    for t, oldest in released:
        assert t - oldest <= delay + 1e-12, "a batch waited longer than max_delay"
    for req, s, n in reqs:
        np.testing.assert_array_equal(req.future.result()[:, 0], np.arange(s, s + n))


def test_a_failed_batch_fails_exactly_the_requests_in_it() -> None:
    q: BatchQueue[np.ndarray] = BatchQueue(BatchPolicy(max_rows=4, max_delay_s=0.0))
    a = q.push(rows(3), 0.0)
    b = q.push(rows(3, 3), 0.0)  # 1 row in the first batch, 2 in the second
    c = q.push(rows(2, 6), 0.0)
    first = q.pop(0.0)
    assert first is not None
    fail(first, RuntimeError("device lost"))
    second = q.pop(0.0)
    assert second is not None
    deliver(second, second.features(), take=take, concat=concat)
    with pytest.raises(RuntimeError, match="device lost"):
        a.future.result()
    with pytest.raises(RuntimeError, match="device lost"):
        b.future.result()
    np.testing.assert_array_equal(c.future.result(), rows(2, 6))


def test_chunk_bounds_cover_the_input_in_device_sized_pieces() -> None:
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(0, 4) == []
    with pytest.raises(ValueError):
        chunk_bounds(3, 0)


def test_per_device_defaults() -> None:
    assert DEVICE_DEFAULTS["cpu"] == BatchPolicy(4096, 0.002)
    assert DEVICE_DEFAULTS["cuda"] == BatchPolicy(65536, 0.005)
    assert BatchPolicy.for_device("mps") == DEVICE_DEFAULTS["cpu"]
    with pytest.raises(ValueError):
        BatchPolicy(0, 0.001)


# --------------------------------------------------------------------------- the worker thread


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray, oldest: float) -> np.ndarray:
        with self.lock:
            self.sizes.append(x.shape[0])
        if self.fail_on is not None and self.fail_on in x[:, 0]:
            raise RuntimeError("boom")
        return x * 10


def test_concurrent_submitters_are_coalesced_and_each_gets_its_rows() -> None:
    run = Recorder()
    gate = threading.Barrier(8)
    with DynamicBatcher(run, BatchPolicy(1000, 0.05), take=take, concat=concat) as b:
        futures: dict[int, object] = {}

        def client(i: int) -> None:
            gate.wait()
            futures[i] = b.submit(rows(10, 10 * i))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, f in futures.items():
            np.testing.assert_array_equal(f.result(timeout=5)[:, 0], np.arange(10 * i, 10 * i + 10) * 10)  # type: ignore[attr-defined]
    assert sum(run.sizes) == 80
    assert len(run.sizes) <= 3  # 8 requests within the 50 ms window: coalesced, not 8 batches


def test_a_full_batch_does_not_wait_for_the_queue_delay() -> None:
    run = Recorder()
    with DynamicBatcher(run, BatchPolicy(100, 30.0), take=take, concat=concat) as b:
        t0 = time.monotonic()
        f = b.submit(rows(100))
        f.result(timeout=5)
        assert time.monotonic() - t0 < 5.0  # released by size, not after the 30 s delay


def test_close_scores_everything_already_submitted_then_refuses_more() -> None:
    run = Recorder()
    b = DynamicBatcher(run, BatchPolicy(1000, 60.0), take=take, concat=concat)
    futures = [b.submit(rows(7, 7 * i)) for i in range(5)]
    b.close()
    assert all(f.done() for f in futures)
    np.testing.assert_array_equal(np.concatenate([f.result() for f in futures])[:, 0], np.arange(35) * 10)
    with pytest.raises(BatcherClosedError):
        b.submit(rows(1))


def test_an_error_in_scoring_reaches_only_the_futures_of_that_batch() -> None:
    run = Recorder(fail_on=3)
    with DynamicBatcher(run, BatchPolicy(4, 0.0), take=take, concat=concat) as b:
        bad = b.submit(rows(4))  # rows 0..3: fails
        bad.exception(timeout=5)
        good = b.submit(rows(4, 100))
        np.testing.assert_array_equal(good.result(timeout=5)[:, 0], np.arange(100, 104) * 10)
    with pytest.raises(RuntimeError, match="boom"):
        bad.result()


def test_submit_blocks_while_the_queue_is_full_backpressure() -> None:
    release = threading.Event()

    def slow(x: np.ndarray, oldest: float) -> np.ndarray:
        release.wait(5)
        return x

    b = DynamicBatcher(slow, BatchPolicy(10, 0.0), take=take, concat=concat, max_queued_rows=10)
    b.submit(rows(10))  # taken by the worker, which blocks in slow()
    time.sleep(0.05)
    b.submit(rows(10))  # fills the queue
    blocked = threading.Thread(target=lambda: b.submit(rows(10)))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive(), "submit should block while max_queued_rows are waiting"
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    b.close()
