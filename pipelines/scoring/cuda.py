"""The CUDA engine: pinned staging, side streams, bf16 where accuracy allows, CUDA graphs per batch bucket.

Only built when ``device.type == "cuda"``; every failure makes the scorer fall back to the CPU
(:mod:`pipelines.scoring.scorer`). Design and measured figures: ``docs/scoring.md``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.network import LifecycleNet
from pipelines.core.scores import F32, N_REASONS
from pipelines.scoring.device import Precision, is_oom
from pipelines.scoring.fused import (
    PRECISION_TOLERANCE,
    FusedWeights,
    RawScores,
    check_against_reference,
    fused_forward,
    top_positive,
)

log = logging.getLogger(__name__)


def _pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@dataclass(slots=True)
class _Graph:
    """One bucket: a captured CUDA graph with its static input and outputs, or None (run eagerly)."""

    graph: Any = None
    x: torch.Tensor | None = None
    outputs: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None


@dataclass(slots=True)
class _InFlight:
    a: int
    b: int
    slot: int
    done: Any  # torch.cuda.Event: results are in the slot's pinned host buffers
    started: float


class CudaEngine:
    """The GPU path: pinned staging, side streams, bf16, CUDA graphs per batch bucket, double buffering.

    Per micro-batch, in slot ``s`` (two slots, alternating):

    1. CPU: copy the rows into pinned ``host_in[s]``;
    2. stream ``h2d``: ``host_in[s] -> dev_in[s]`` (non-blocking);
    3. stream ``compute`` (waits for 2): copy into the bucket's static input (padded
       to a power of two >= ``min_bucket``), replay the bucket's CUDA graph (or run
       eagerly when capture failed), copy the outputs into ``dev_out[s]``;
    4. stream ``d2h`` (waits for 3): ``dev_out[s] -> host_out[s]`` (pinned, non-blocking).

    ``run`` issues batch i+1 before waiting for batch i, so the CPU stages the next
    rows and formats the previous batch's reasons while the GPU works. A slot is
    reused only after its previous batch's results were read back (event
    synchronisation), which is what makes the reuse of every buffer safe.
    """

    def __init__(
        self,
        model: LifecycleNet,
        device: torch.device,
        *,
        max_rows: int,
        precision: Precision = "auto",
        graphs: bool = True,
        min_bucket: int = 1024,
        k: int = N_REASONS,
        slots: int = 2,
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"CudaEngine needs a cuda device, got {device}")
        self.device = device
        self.k = min(k, model.n_features)
        self.precision = precision
        with torch.cuda.device(device):
            w32 = FusedWeights.build(model, device, torch.float32)
            self.max_difference = {"fp32": check_against_reference(model, w32, device, PRECISION_TOLERANCE["fp32"])}
            w16: FusedWeights | None = None
            if precision in ("auto", "bf16"):
                try:
                    w16 = FusedWeights.build(model, device, torch.bfloat16)
                    self.max_difference["bf16"] = check_against_reference(
                        model, w16, device, PRECISION_TOLERANCE["bf16"]
                    )
                except ValueError as err:
                    log.warning("bf16 scoring on %s out of tolerance (%s); using fp32", device, err)
                    w16 = None
            # auto: probabilities alone in bf16 (|dp| <= 0.005 measured), reasons in fp32 (bf16 reorders the
            # top-3 drivers of ~3.5 % of rows, docs/scoring.md); bf16: both; fp32: neither
            self.weights_for = {False: w16 or w32, True: w16 if precision == "bf16" and w16 else w32}
            self.max_rows = _pow2_at_least(max(max_rows, min_bucket))
            self.min_bucket = min(min_bucket, self.max_rows)
            self.use_graphs = graphs
            f = model.n_features
            self.h2d = torch.cuda.Stream(device)
            self.compute = torch.cuda.Stream(device)
            self.d2h = torch.cuda.Stream(device)
            rows = self.max_rows
            self.host_in = [torch.empty((rows, f), dtype=torch.float32, pin_memory=True) for _ in range(slots)]
            self.dev_in = [torch.empty((rows, f), dtype=torch.float32, device=device) for _ in range(slots)]
            self.host_probs = [torch.empty((rows, 2), dtype=torch.float32, pin_memory=True) for _ in range(slots)]
            self.dev_probs = [torch.empty((rows, 2), dtype=torch.float32, device=device) for _ in range(slots)]
            self.host_top = [torch.empty((rows, self.k), dtype=torch.int16, pin_memory=True) for _ in range(slots)]
            self.dev_top = [torch.empty((rows, self.k), dtype=torch.int16, device=device) for _ in range(slots)]
            self.host_bad = [torch.zeros(1, dtype=torch.int64, pin_memory=True) for _ in range(slots)]
            self.dev_bad = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(slots)]
            self.h2d_done = [torch.cuda.Event() for _ in range(slots)]
            self.comp_done = [torch.cuda.Event() for _ in range(slots)]
            self.d2h_done = [torch.cuda.Event() for _ in range(slots)]
        self.slots = slots
        self._graphs: dict[tuple[int, bool], _Graph] = {}

    def buckets(self) -> list[int]:
        """Batch sizes with a graph: powers of two from ``min_bucket`` to ``max_rows``."""
        out, b = [], self.min_bucket
        while b <= self.max_rows:
            out.append(b)
            b *= 2
        return out

    def capture(self, bucket: int) -> None:
        """Capture the bucket's graphs (with and without reasons) now, rather than on first use."""
        for reasons in (True, False):
            self._graph(bucket, reasons)

    def _kernel(self, x: torch.Tensor, reasons: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        p, a, bad = fused_forward(self.weights_for[reasons], x, attributions=reasons)
        assert bad is not None  # sanitize=True
        return p, top_positive(a, self.k) if a is not None else None, bad

    def _graph(self, bucket: int, reasons: bool) -> _Graph:
        key = (bucket, reasons)
        g = self._graphs.get(key)
        if g is not None:
            return g
        g = _Graph()
        if self.use_graphs:
            f = self.weights_for[reasons].inv_std.shape[0]
            with torch.cuda.device(self.device), torch.inference_mode():
                torch.cuda.synchronize(self.device)
                try:
                    x = torch.zeros((bucket, f), dtype=torch.float32, device=self.device)
                    side = torch.cuda.Stream(self.device)
                    side.wait_stream(torch.cuda.current_stream(self.device))
                    with torch.cuda.stream(side):
                        for _ in range(2):  # warm-up outside capture (cuBLAS handles, workspaces)
                            self._kernel(x, reasons)
                    torch.cuda.current_stream(self.device).wait_stream(side)
                    torch.cuda.synchronize(self.device)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                        outputs = self._kernel(x, reasons)
                    g = _Graph(graph, x, outputs)
                except Exception as err:  # noqa: BLE001 - eager execution still works (or fails and is handled)
                    if is_oom(err):
                        raise
                    log.warning("CUDA graph capture of bucket %d failed (%s); running it eagerly", bucket, err)
                    torch.cuda.synchronize(self.device)
        self._graphs[key] = g
        return g

    def _issue(self, x: F32, a: int, b: int, slot: int, reasons: bool) -> _InFlight:
        n = b - a
        bucket = max(self.min_bucket, _pow2_at_least(n))
        g = self._graph(bucket, reasons)  # capture (a device sync) happens before anything is in flight
        started = time.monotonic()
        host_in = self.host_in[slot][:n]
        host_in.copy_(torch.from_numpy(np.ascontiguousarray(x[a:b])))
        with torch.cuda.device(self.device), torch.inference_mode():
            with torch.cuda.stream(self.h2d):
                self.dev_in[slot][:n].copy_(host_in, non_blocking=True)
                self.h2d_done[slot].record(self.h2d)
            with torch.cuda.stream(self.compute):
                self.compute.wait_event(self.h2d_done[slot])
                if g.graph is not None and g.x is not None and g.outputs is not None:
                    g.x[:n].copy_(self.dev_in[slot][:n])
                    if n < bucket:  # padding: zeros, not an earlier batch's rows (they would be counted again)
                        g.x[n:].zero_()
                    g.graph.replay()
                    probs, top, bad = g.outputs
                else:
                    probs, top, bad = self._kernel(self.dev_in[slot][:n], reasons)
                self.dev_probs[slot][:n].copy_(probs[:n])
                if reasons and top is not None:
                    self.dev_top[slot][:n].copy_(top[:n])
                self.dev_bad[slot].copy_(bad.reshape(1))
                self.comp_done[slot].record(self.compute)
            with torch.cuda.stream(self.d2h):
                self.d2h.wait_event(self.comp_done[slot])
                self.host_probs[slot][:n].copy_(self.dev_probs[slot][:n], non_blocking=True)
                if reasons:
                    self.host_top[slot][:n].copy_(self.dev_top[slot][:n], non_blocking=True)
                self.host_bad[slot].copy_(self.dev_bad[slot], non_blocking=True)
                self.d2h_done[slot].record(self.d2h)
        return _InFlight(a, b, slot, self.d2h_done[slot], started)

    def _finish(self, f: _InFlight, reasons: bool) -> tuple[int, int, RawScores]:
        f.done.synchronize()
        n = f.b - f.a
        probs = self.host_probs[f.slot][:n].numpy().copy()
        top = self.host_top[f.slot][:n].numpy().copy() if reasons else None
        bad = int(self.host_bad[f.slot][0])
        return f.a, f.b, RawScores(probs, top, bad, f.started, time.monotonic() - f.started)

    def run(self, x: F32, bounds: Sequence[tuple[int, int]], *, reasons: bool) -> Iterator[tuple[int, int, RawScores]]:
        pending: deque[_InFlight] = deque()
        try:
            for i, (a, b) in enumerate(bounds):
                if b - a > self.max_rows:
                    raise ValueError(f"batch of {b - a} rows exceeds the engine's {self.max_rows}")
                if len(pending) == self.slots:
                    yield self._finish(pending.popleft(), reasons)
                pending.append(self._issue(x, a, b, i % self.slots, reasons))
            while pending:
                yield self._finish(pending.popleft(), reasons)
        finally:
            if pending:  # abandoned (error, or the caller stopped): let in-flight work end before reuse
                try:
                    torch.cuda.synchronize(self.device)
                except Exception:  # noqa: BLE001 - the device may be gone; the caller handles that
                    log.debug("synchronize after an abandoned batch failed", exc_info=True)
