"""``make bench-scoring``: scoring-engine throughput as JSON lines ({"name", "value", "unit", ...}).

* ``scoring_rows_per_s`` per ``device`` (cpu, cuda when present), ``batch`` (micro-batch rows:
  1, 16, 256, 1024, 4096, 65536, 262144) and ``mode``: ``probs`` (probabilities only),
  ``top3`` (probabilities + the three strongest attributions, as indices: the device's work),
  ``reasons`` (``Scorer.score``: ``top3`` turned into phrase lists in Arrow on the CPU). CPU
  figures use ``threads`` torch threads (BENCH_THREADS, default: every core); each call scores one
  micro-batch. CUDA calls score 4 micro-batches each, so the double-buffered pipeline is full.
* ``h2d_bytes_per_s`` (CUDA): pinned host -> device copies of 256 MiB, the transfer limit; each CUDA
  ``scoring_rows_per_s`` line carries ``h2d_fraction`` = rows/s x bytes per row (71 x 4) / that limit.
* ``scoring_max_abs_diff`` / ``scoring_reasons_agreement``: bf16 (on the CPU as a proxy, and on
  CUDA) and CUDA fp32 against the CPU fp32 scores.

``--device cpu`` runs the CPU part only (what ``make bench`` includes; under a minute on 2 cores).
Multi-thread CPU figures assume the cores are free: OpenMP threads spin while waiting, and on a host
shared with other busy processes they collapse (run with ``OMP_WAIT_POLICY=PASSIVE`` there, or
``BENCH_THREADS=1``; docs/scoring.md).
Features: simulated users (BENCH_SCORING_USERS, default 20000) tiled to the batch size, or a saved
matrix with ``--features FILE.npy`` (``--save-features FILE.npy`` writes one), for machines without
the simulator's dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from pipelines.core.features import FEATURE_NAMES, schema_hash
from pipelines.scoring.fused import FusedWeights, fused_forward, top_positive
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer

BATCHES = (1, 16, 256, 1024, 4096, 65536, 262144)
MODES = ("probs", "top3", "reasons")


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, **extra}), flush=True)


def simulated_features(users: int) -> np.ndarray:
    """Every simulated user's features at the end of a 30-day history (what the stream scores)."""
    from pipelines.contract.decode import decode_batch
    from pipelines.contract.events import EventColumns, RawBatch
    from pipelines.core.features import compute_features
    from pipelines.offline.history import sort_by_time, state_as_of
    from pipelines.offline.simulate import SimConfig, simulate
    from pipelines.offline.simulate_io import iter_ndjson_batches

    sim = simulate(SimConfig(users=users, days=30))
    parts = [
        decode_batch(RawBatch("sim", 0, np.arange(len(b)), b), now_ms=4_000_000_000_000).events
        for b in iter_ndjson_batches(sim.events, 200_000)
    ]
    ev = sort_by_time(EventColumns.concat(parts))
    end = int(ev.ts_ms[-1])
    st = state_as_of(ev, end)
    return compute_features(st, np.arange(st.n, dtype=np.int64), end)


def tiled(x: np.ndarray, n: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(x, (n, x.shape[1])), dtype=np.float32)


def rate(fn: Callable[[], object], rows: int, seconds: float, *, sync: Callable[[], None] = lambda: None) -> float:
    """Rows per second of ``fn`` (``rows`` per call): one warm-up call, then calls for ``seconds`` (>= 3 calls)."""
    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    sync()
    return calls * rows / (time.perf_counter() - t0)


def bench_device(
    scorers: Callable[[int], Scorer],
    x_all: np.ndarray,
    device: str,
    seconds: float,
    *,
    h2d: float | None = None,
    **extra: object,
) -> None:
    """``scoring_rows_per_s`` for every batch size and mode (``h2d``: the transfer limit, bytes/s)."""
    per_call = 4 if device == "cuda" else 1
    row_bytes = x_all.shape[1] * 4
    for batch in BATCHES:
        scorer = scorers(batch)
        n = batch * per_call
        x = tiled(x_all, n)
        bounds = [(i, min(n, i + batch)) for i in range(0, n, batch)]

        def top3(s: Scorer = scorer, x: np.ndarray = x, b: list[tuple[int, int]] = bounds) -> None:
            for _ in s._engine.run(x, b, reasons=True):  # noqa: SLF001 - the device's part alone
                pass

        fns: dict[str, Callable[[], object]] = {
            "probs": partial(scorer.score_probs, x),
            "top3": top3,
            "reasons": partial(scorer.score, x),
        }
        for mode in MODES:
            r = rate(fns[mode], n, seconds * (2 if batch >= 65536 else 1))
            more = dict(extra)
            if h2d:
                more["h2d_fraction"] = round(r * row_bytes / h2d, 4)
            emit("scoring_rows_per_s", r, "rows/s", device=device, batch=batch, mode=mode, **more)


def precision_lines(model: torch.nn.Module, x: np.ndarray, device: torch.device) -> None:
    """bf16 (and, on CUDA, fp32) probabilities and top-3 drivers against CPU fp32 on the same rows."""

    def run(dev: torch.device, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
        w = FusedWeights.build(model, dev, dtype)  # type: ignore[arg-type]
        with torch.inference_mode():
            p, a, _ = fused_forward(w, torch.from_numpy(x).to(dev), attributions=True)
            assert a is not None
            return p.float().cpu().numpy(), top_positive(a, 3).cpu().numpy()

    ref_p, ref_top = run(torch.device("cpu"), torch.float32)
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        if device.type == "cpu" and dtype == torch.float32:
            continue  # the reference itself
        p, top = run(device, dtype)
        diff = np.abs(p - ref_p)
        tag = {"device": device.type, "precision": label, "reference": "cpu-fp32", "rows": int(x.shape[0])}
        emit("scoring_max_abs_diff", float(diff.max()), "probability", p99=float(np.quantile(diff, 0.99)), **tag)
        same = float((top == ref_top).all(axis=1).mean())
        emit("scoring_reasons_agreement", same, "fraction of rows with the same top-3", **tag)


def h2d_bytes_per_s(device: torch.device, mib: int = 256, reps: int = 20) -> float:
    host = torch.empty(mib << 20, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    dev = torch.empty_like(host, device=device)
    for _ in range(3):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    return reps * host.numel() / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scoring", description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all", help="all: CPU, and CUDA when present")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SCORING_SECONDS", "0.4")))
    ap.add_argument("--features", type=Path, default=None, help="feature matrix (.npy) instead of a simulation")
    ap.add_argument("--save-features", type=Path, default=None, help="write the simulated matrix (.npy) and exit")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    args = ap.parse_args()

    if args.features is not None:
        x_all = np.load(args.features).astype(np.float32)
    else:
        x_all = simulated_features(int(os.environ.get("BENCH_SCORING_USERS", "20000")))
    if args.save_features is not None:
        np.save(args.save_features, x_all)
        print(f"wrote {x_all.shape[0]} x {x_all.shape[1]} features to {args.save_features}", file=sys.stderr)
        return 0
    if x_all.shape[1] != len(FEATURE_NAMES):
        raise SystemExit(f"features have {x_all.shape[1]} columns, the model {len(FEATURE_NAMES)}")
    from models.artifact import load_artifact

    art = load_artifact(args.model, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)
    sample = x_all[:20_000]

    if args.device in ("cpu", "all"):
        threads = int(os.environ.get("BENCH_THREADS", "0")) or (os.cpu_count() or 1)
        torch.set_num_threads(threads)
        cpu = torch.device("cpu")
        bench_device(lambda b: Scorer(art, device=cpu, max_batch_rows=b), x_all, "cpu", args.seconds, threads=threads)
        if threads > 1:  # the streaming default (LIFECYCLE_TORCH_THREADS=1), for comparison
            torch.set_num_threads(1)
            one = Scorer(art, device=cpu, max_batch_rows=1024)
            x = tiled(x_all, 1024)
            for mode, fn in (("probs", partial(one.score_probs, x)), ("reasons", partial(one.score, x))):
                r = rate(fn, 1024, args.seconds)
                emit("scoring_rows_per_s", r, "rows/s", device="cpu", batch=1024, mode=mode, threads=1)
            torch.set_num_threads(threads)
        precision_lines(art.model, sample, cpu)

    if args.device in ("cuda", "all"):
        if not torch.cuda.is_available():
            print("bench.scoring: no CUDA device: CUDA figures skipped", file=sys.stderr)
            return 0 if args.device == "all" else 1
        torch.set_num_threads(min(8, os.cpu_count() or 1))  # the staging copies into pinned memory use them
        gpu = torch.device("cuda")
        limit = h2d_bytes_per_s(gpu)
        emit("h2d_bytes_per_s", limit, "bytes/s", device="cuda", pinned=True, bytes=256 << 20,
             gpu=torch.cuda.get_device_name(gpu))  # fmt: skip
        for precision in ("auto", "fp32"):

            def make(b: int, p: str = precision) -> Scorer:
                s = Scorer(art, device=gpu, max_batch_rows=b, precision=p)  # type: ignore[arg-type]
                if s.device.type != "cuda":
                    raise SystemExit("the CUDA scorer fell back to the CPU: see the warning above")
                s.warmup()
                return s

            bench_device(make, x_all, "cuda", args.seconds, h2d=limit, precision=precision)
        precision_lines(art.model, sample, gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
