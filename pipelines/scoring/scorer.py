"""The scoring engine: feature rows -> churn risk, purchase propensity and reason codes.

:class:`Scorer` is the one entry point (streaming flow, batch scoring, rescore,
benchmarks). It scores a feature matrix in micro-batches of at most
``max_batch_rows`` rows on one torch device and returns :class:`Scores`; the
asynchronous, coalescing front end for backfills is :meth:`Scorer.batcher`
(:mod:`pipelines.scoring.batcher`). Design and measured figures: ``docs/scoring.md``.

The model stays in :mod:`models`; this module executes it. An *engine* runs the
network's inference maths - log1p/z-score normalisation, the ReLU trunk, the
calibrated heads and the input x gradient attribution of the churn head (see
:func:`models.network.input_x_gradient`) - as one fused pass over a batch, and
returns the probabilities and the indices of the three strongest positive
attributions. Engines check themselves against
:func:`models.network.input_x_gradient` when built, so a change of the network
that they do not understand is never scored wrongly: the CPU engine then runs
that reference implementation, a CUDA engine is not used (CPU fallback).

* CPU (:class:`CpuEngine`): fp32, cache-sized tiles, threads as set by
  ``LIFECYCLE_TORCH_THREADS``.
* CUDA (:class:`CudaEngine`, only when ``device.type == "cuda"``): pinned host
  buffers, host-to-device copies on a side stream, bf16 matmuls where accuracy
  allows (probabilities alone; fp32 normalisation and head), one CUDA graph per
  power-of-two batch bucket (inputs padded to the bucket), two buffer slots so
  that staging the next chunk and turning the previous one into phrases on the
  CPU overlap the GPU's work, results copied back asynchronously.

Faults: an out-of-memory error halves the micro-batch and retries (and keeps
the halved size as the device's cap); any other error of a non-CPU device, at
load or at any call, switches this scorer to the CPU for good, with one
warning and the ``lifecycle_scoring_device`` gauge flipped. Rows with NaN/inf
features are counted and have those values zeroed before the model sees them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import torch
from torch import nn

from models.artifact import Artifact, load_artifact
from models.network import LifecycleNet, input_x_gradient
from pipelines.core.features import FEATURE_NAMES, REGISTRY, schema_hash
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.scoring.batcher import BatchPolicy, DynamicBatcher, chunk_bounds

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "artifacts" / "default"
N_REASONS = 3
_MAX_CENTS = (1 << 40) - 1  # phrase-cache key packs the value in 40 bits of cents
_CACHE_MAX = 200_000
#: CPU tile: activations of a tile stay in L2 (2048 x (71 + 128 + 64) floats ~ 2 MB shared by two layers)
CPU_TILE_ROWS = 2048
#: Largest |probability| difference an engine may show against the fp32 reference at build time
#: (bf16 measured at 4.6e-3 on the default model, docs/scoring.md); beyond it that precision is not used.
PRECISION_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}

Precision = Literal["auto", "fp32", "bf16"]
_EMPTY_REASONS = pa.array([], pa.list_(pa.string()))  # immutable; building one costs ~20 us
F32 = npt.NDArray[np.float32]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when usable, else CPU; an explicit ``cuda`` without a GPU falls back loudly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; scoring on CPU", name)
        return torch.device("cpu")
    return torch.device(name)


@dataclass(frozen=True, slots=True)
class Scores:
    churn_risk: F32
    purchase_propensity: F32
    reasons: pa.ListArray  # list<string> per row, strongest driver first
    #: the reasons' feature indices per row (n x k, strongest first, -1 padded): what playbook rules test
    reason_features: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros((0, N_REASONS), np.int16))

    def __len__(self) -> int:
        return int(self.churn_risk.shape[0])


def take_scores(s: Scores, start: int, end: int) -> Scores:
    """Rows ``[start, end)`` of ``s`` (views, no copies)."""
    return Scores(
        s.churn_risk[start:end],
        s.purchase_propensity[start:end],
        s.reasons.slice(start, end - start),
        s.reason_features[start:end],
    )


def concat_scores(parts: Sequence[Scores]) -> Scores:
    """``parts`` stacked in order."""
    if not parts:
        return Scores(np.zeros(0, np.float32), np.zeros(0, np.float32), _EMPTY_REASONS)
    return Scores(
        np.concatenate([p.churn_risk for p in parts]),
        np.concatenate([p.purchase_propensity for p in parts]),
        pa.concat_arrays([p.reasons for p in parts]),
        np.concatenate([p.reason_features for p in parts]),
    )


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error of torch (CUDA or a CPU allocation)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


# --------------------------------------------------------------------------- fused inference maths


@dataclass(frozen=True, slots=True)
class FusedWeights:
    """A :class:`~models.network.LifecycleNet` laid out for inference on one device and precision.

    Normalisation stays an fp32 elementwise step (folding it into the first
    layer would cancel large terms, which bf16 cannot afford); calibration is
    folded into the head, which is evaluated in fp32.
    """

    log_weight: torch.Tensor  # (F,) fp32: 1 where the model reads log1p(x), else 0
    shift: torch.Tensor  # (F,) fp32: -mean / std
    inv_std: torch.Tensor  # (F,) fp32
    w_t: tuple[torch.Tensor, ...]  # per trunk layer: W^T (in x out), compute dtype
    bias: tuple[torch.Tensor, ...]  # per trunk layer: (out,), compute dtype
    #: per trunk layer: W (out x in), compute dtype, for the attribution; the first one's columns are
    #: zero-padded to a multiple of 8 (measured 1.4x faster on AVX2 than 71 columns)
    w: tuple[torch.Tensor, ...]
    head_t: torch.Tensor  # (H x heads) fp32, calibration scale folded in
    head_b: torch.Tensor  # (heads,) fp32
    grad0: torch.Tensor  # (H,) compute dtype: d(churn logit)/d(last hidden)
    dtype: torch.dtype

    @classmethod
    def build(cls, model: LifecycleNet, device: torch.device, dtype: torch.dtype) -> FusedWeights:
        """Lay out ``model``; raises TypeError for a trunk other than (Linear, ReLU[, Dropout])*."""
        linears = trunk_linears(model)

        def dev(t: torch.Tensor, dt: torch.dtype = torch.float32) -> torch.Tensor:
            return t.detach().to(device=device, dtype=dt).contiguous()

        scale = model.calib_scale.detach().float()
        head_w = model.head.weight.detach().float() * scale[:, None]
        inv_std = 1.0 / model.std.detach().float()
        w = [lin.weight.detach().float() for lin in linears]
        f = w[0].shape[1]
        w[0] = torch.nn.functional.pad(w[0], (0, -f % 8))
        return cls(
            log_weight=dev(model.log_mask.detach().float()),
            shift=dev(-model.mean.detach().float() * inv_std),
            inv_std=dev(inv_std),
            w_t=tuple(dev(lin.weight.t(), dtype) for lin in linears),
            bias=tuple(dev(lin.bias, dtype) for lin in linears),
            w=tuple(dev(m, dtype) for m in w),
            head_t=dev(head_w.t()),
            head_b=dev(model.head.bias.detach().float() * scale + model.calib_bias.detach().float()),
            grad0=dev(head_w[0], dtype),
            dtype=dtype,
        )


def trunk_linears(model: LifecycleNet) -> list[nn.Linear]:
    """The trunk's Linear layers, each followed by a ReLU (dropout is the identity in eval mode)."""
    linears: list[nn.Linear] = []
    relus = 0
    for layer in model.trunk:
        if isinstance(layer, nn.Linear):
            if len(linears) != relus:
                raise TypeError("fused scoring: two Linear layers without a ReLU between them")
            linears.append(layer)
        elif isinstance(layer, nn.ReLU):
            relus += 1
        elif not isinstance(layer, nn.Dropout):
            raise TypeError(f"fused scoring: unsupported trunk layer {type(layer).__name__}")
    if not linears or relus != len(linears):
        raise TypeError("fused scoring: the trunk must be (Linear, ReLU) blocks")
    return linears


def fused_forward(
    w: FusedWeights, x: torch.Tensor, *, attributions: bool, sanitize: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(calibrated probabilities, churn-head attributions or None, rows with non-finite values or None).

    ``sanitize``: zero non-finite values first and count their rows (a 0-d
    tensor, so this stays free of host synchronisation and can be captured in
    a CUDA graph); callers that did it already pass False. The attribution is
    the closed-form input x gradient of :func:`models.network.input_x_gradient`:
    z * W1^T (m1 * W2^T (m2 * w_head)), the ReLU masks m as 0/1 via ``sign``
    of the (non-negative) activations.
    """
    if sanitize:
        finite = torch.isfinite(x)
        bad_rows = (~finite).any(dim=1).sum()
        x = torch.where(finite, x, 0.0)
    else:
        bad_rows = None
    # log1p where flagged: lerp with 0/1 weights is exact (ATen evaluates end - (end - x) * 0 for weight 1)
    # and ~2.5x faster than torch.where on CPUs
    t = torch.lerp(x, torch.clamp(x, min=0.0).log1p_(), w.log_weight)
    z = torch.addcmul(w.shift, t, w.inv_std)  # (t - mean) / std
    h = z.to(w.dtype)
    acts: list[torch.Tensor] = []
    for wt, b in zip(w.w_t, w.bias, strict=True):
        h = torch.addmm(b, h, wt).relu_()
        acts.append(h)
    probs = torch.sigmoid(torch.addmm(w.head_b, h.float(), w.head_t))
    if not attributions:
        return probs, None, bad_rows
    u = torch.sign(acts[-1]) * w.grad0
    for i in range(len(acts) - 1, 0, -1):
        u = (u @ w.w[i]).mul_(torch.sign(acts[i - 1]))
    attr = z * (u @ w.w[0])[:, : z.shape[1]].float()
    return probs, attr, bad_rows


def top_positive(attr: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the indices of the ``k`` largest attributions, strongest first; -1 where <= 0 (int16).

    ``torch.topk`` on GPUs; on CPUs k rounds of max + mask, ~2x faster there
    than ``topk`` for k = 3 of ~70 columns (measured).
    """
    if attr.device.type != "cpu":
        vals, idx = torch.topk(attr, k, dim=1)
        return torch.where(vals > 0, idx, -1).to(torch.int16)
    a = attr.clone()
    out = torch.empty((attr.shape[0], k), dtype=torch.int16)
    for j in range(k):
        vals, idx = a.max(dim=1)
        out[:, j] = torch.where(vals > 0, idx, -1)
        a.scatter_(1, idx[:, None], float("-inf"))
    return out


def check_against_reference(model: LifecycleNet, w: FusedWeights, device: torch.device, tolerance: float) -> float:
    """Max |probability| difference of the fused maths against :func:`input_x_gradient` on probe rows.

    Raises ValueError when the probabilities or attributions disagree beyond ``tolerance``.
    """
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((256, model.n_features), generator=gen, dtype=torch.float32)
    t = model.mean.detach().cpu() + model.std.detach().cpu() * z
    x = torch.where(model.log_mask.detach().cpu(), torch.expm1(t).clamp(min=0.0), t)
    ref_p, ref_a = (r.cpu() for r in input_x_gradient(model, x.to(model.mean.device)))
    with torch.inference_mode():
        p, a, _ = fused_forward(w, x.to(device), attributions=True)
    assert a is not None
    dp = float((p.float().cpu() - ref_p).abs().max())
    scale = float(ref_a.abs().max()) or 1.0
    da = float((a.float().cpu() - ref_a).abs().max()) / scale
    if not (dp <= tolerance and da <= 10 * tolerance):
        raise ValueError(f"fused scoring disagrees with the reference: |dp| {dp:.3g}, |d attr|/max {da:.3g}")
    return dp


# --------------------------------------------------------------------------- engines


@dataclass(frozen=True, slots=True)
class RawScores:
    """What an engine returns for one micro-batch."""

    probs: F32  # (n, heads)
    top: npt.NDArray[np.int16] | None  # (n, k) feature indices, strongest first, -1 = none
    nonfinite_rows: int
    started: float  # time.monotonic() when the batch was issued
    seconds: float  # issue -> results on the host


class Engine(Protocol):
    """Runs micro-batches on one device.

    ``run`` scores the rows ``[a, b)`` of ``x`` for each bound, in order, and
    yields ``(a, b, RawScores)`` per bound as results become ready; an engine
    may have later bounds in flight while the caller handles a yielded one.
    Exceptions propagate from the generator (out of memory included).
    """

    device: torch.device

    def run(
        self, x: F32, bounds: Sequence[tuple[int, int]], *, reasons: bool
    ) -> Iterator[tuple[int, int, RawScores]]: ...


class CpuEngine:
    """fp32 fused maths in cache-sized tiles; threads as set by ``torch.set_num_threads``."""

    def __init__(self, model: LifecycleNet, *, k: int = N_REASONS, tile_rows: int = CPU_TILE_ROWS) -> None:
        self.device = torch.device("cpu")
        self.k = min(k, model.n_features)
        self.tile_rows = tile_rows
        self.weights: FusedWeights | None = None
        self.model = model
        try:
            w = FusedWeights.build(model, self.device, torch.float32)
            check_against_reference(model, w, self.device, PRECISION_TOLERANCE["fp32"])
            self.weights = w
        except (TypeError, ValueError) as err:
            log.warning("fused CPU scoring unavailable (%s); using the reference implementation", err)

    def _tile(self, x: torch.Tensor, reasons: bool) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        if self.weights is None:  # reference path: models.network as written
            finite = torch.isfinite(x)
            bad = int((~finite).any(dim=1).sum())
            probs, attr = input_x_gradient(self.model, torch.where(finite, x, 0.0))
            return probs, top_positive(attr, self.k) if reasons else None, bad
        bad = 0
        # one cheap reduction (NaN and inf propagate into the sum; a finite sum that overflows only costs the
        # exact check, which then finds nothing); the per-element check only when it is needed
        if not math.isfinite(float(x.sum())):
            finite = torch.isfinite(x)
            bad = int((~finite).any(dim=1).sum())
            x = torch.where(finite, x, 0.0)
        p, a, _ = fused_forward(self.weights, x, attributions=reasons, sanitize=False)
        return p, top_positive(a, self.k) if a is not None else None, bad

    def run(self, x: F32, bounds: Sequence[tuple[int, int]], *, reasons: bool) -> Iterator[tuple[int, int, RawScores]]:
        xt = torch.from_numpy(x)
        for a, b in bounds:
            t0 = time.monotonic()
            with torch.inference_mode():
                if b - a <= self.tile_rows:  # the common case, without the bookkeeping of tiles
                    p, tp, bad = self._tile(xt[a:b], reasons)
                    raw = RawScores(p.numpy(), tp.numpy() if tp is not None else None, bad, t0, 0.0)
                else:
                    probs = np.empty((b - a, 2), np.float32)
                    top = np.empty((b - a, self.k), np.int16) if reasons else None
                    bad = 0
                    for i, j in chunk_bounds(b - a, self.tile_rows):
                        p, tp, nb = self._tile(xt[a + i : a + j], reasons)
                        probs[i:j] = p.numpy()
                        if top is not None and tp is not None:
                            top[i:j] = tp.numpy()
                        bad += nb
                    raw = RawScores(probs, top, bad, t0, 0.0)
            yield a, b, dataclasses.replace(raw, seconds=time.monotonic() - t0)


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


# --------------------------------------------------------------------------- the scorer


class Scorer:
    """Scores feature matrices with one loaded model on one device (CPU fallback built in).

    ``max_batch_rows``: rows per micro-batch (default: per device,
    :data:`pipelines.scoring.batcher.DEVICE_DEFAULTS`). ``precision`` (CUDA only; the
    CPU engine is fp32): ``auto`` = probabilities alone in bf16, scores with
    reasons in fp32; ``fp32``; ``bf16`` = everything in bf16 (docs/scoring.md
    has the measured differences). ``engine``: inject an :class:`Engine` (tests).
    ``model`` is the CPU copy of the network; ``device`` the device in use now.
    """

    def __init__(
        self,
        artifact: Artifact,
        *,
        device: torch.device,
        max_batch_rows: int | None = None,
        metrics: PipelineMetrics | None = None,
        precision: Precision = "auto",
        cuda_graphs: bool = True,
        engine: Engine | None = None,
    ) -> None:
        if max_batch_rows is not None and max_batch_rows <= 0:
            raise ValueError(f"max_batch_rows must be positive, got {max_batch_rows}")
        self.artifact = artifact
        self.model_version = artifact.model_version
        self.metrics = metrics
        self.model: LifecycleNet = artifact.model.to("cpu").eval()
        self.k = min(N_REASONS, self.model.n_features)
        self.precision: Precision = precision
        self.max_batch_rows = max_batch_rows or BatchPolicy.for_device(device.type).max_rows
        self._rows_cap = self.max_batch_rows
        self._phrase_cache: dict[int, str] = {}
        self._mean_raw = self._raw_means()
        self._lock = threading.Lock()  # one caller at a time on the device (its streams and buffers)
        self._engine: Engine
        if engine is not None:
            self._engine = engine
        elif device.type == "cuda":
            try:
                self._engine = CudaEngine(
                    self.model, device, max_rows=self.max_batch_rows, precision=precision, graphs=cuda_graphs
                )
            except Exception as err:  # noqa: BLE001 - an unusable device must not stop scoring
                self._engine = self._fall_back(device, err, at="load")
        else:
            self._engine = CpuEngine(self.model)
        self.device = self._engine.device
        self._set_device_gauge()

    @classmethod
    def from_dir(
        cls,
        path: Path,
        *,
        device: str = "auto",
        max_batch_rows: int | None = None,
        metrics: PipelineMetrics | None = None,
        precision: Precision = "auto",
        cuda_graphs: bool = True,
    ) -> Scorer:
        dev = resolve_device(device)
        # weights load on the CPU: the CPU copy is the fallback if the device turns out unusable
        art = load_artifact(path, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES, device="cpu")
        return cls(
            art,
            device=dev,
            max_batch_rows=max_batch_rows,
            metrics=metrics,
            precision=precision,
            cuda_graphs=cuda_graphs,
        )

    # ------------------------------------------------------------------ public API

    def score(self, features: F32) -> Scores:
        """Score rows (n x F). Non-finite values are zeroed and the rows counted, never fed to the model."""
        return self.score_at(features, time.monotonic())

    def score_at(self, features: F32, arrived: float) -> Scores:
        """:meth:`score` for rows that arrived at ``arrived`` (``time.monotonic()``), for the queue-delay metric."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        probs, reasons, top = self._run(x, arrived, reasons=True)
        return Scores(probs[:, 0].copy(), probs[:, 1].copy(), reasons, top)

    def score_probs(self, features: F32) -> tuple[F32, F32]:
        """(churn risk, purchase propensity) only: no attribution, no reasons."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        probs, _, _ = self._run(x, time.monotonic(), reasons=False)
        return probs[:, 0].copy(), probs[:, 1].copy()

    def batcher(
        self, policy: BatchPolicy | None = None, *, max_queued_rows: int | None = None
    ) -> DynamicBatcher[Scores]:
        """An asynchronous, coalescing front end: ``submit(features) -> Future[Scores]``.

        One worker thread scores for all submitters; close it (or use it as a
        context manager) to score what is queued and stop. Direct :meth:`score`
        calls from other threads meanwhile are safe: they take turns with the
        worker (one lock per scorer guards the device's streams and buffers).
        """
        pol = policy or BatchPolicy(self.max_batch_rows, BatchPolicy.for_device(self.device.type).max_delay_s)
        return DynamicBatcher(
            self.score_at, pol, take=take_scores, concat=concat_scores, max_queued_rows=max_queued_rows
        )

    def warmup(self) -> None:
        """Build what the first calls would otherwise build: the CUDA graph of every bucket, both modes.

        A bucket that does not fit in memory caps the micro-batch below it (as an OOM split would).
        """
        eng = self._engine
        if not isinstance(eng, CudaEngine):
            return
        with self._lock:
            for bucket in eng.buckets():
                try:
                    eng.capture(bucket)
                except Exception as err:  # noqa: BLE001
                    if is_oom(err):
                        self._rows_cap = max(1, bucket // 2)
                        log.warning(
                            "out of memory capturing %d-row batches on %s; capping at %d",
                            bucket,
                            eng.device,
                            bucket // 2,
                        )
                        if self.metrics is not None:
                            self.metrics.scoring_oom_splits.inc()
                        return
                    self._engine = self._fall_back(eng.device, err, at="warm-up")
                    self.device = self._engine.device
                    self._set_device_gauge()
                    return

    # ------------------------------------------------------------------ internals

    def _raw_means(self) -> npt.NDArray[np.float64]:
        """Per feature, the value above which a reason is worded "high": the feature's neutral
        value where the registry defines one, else the training mean in raw units.
        """
        m = self.model
        mean = m.mean.detach().cpu().numpy().astype(np.float64)
        log_mask = m.log_mask.detach().cpu().numpy()
        raw = np.where(log_mask, np.expm1(mean), mean)
        neutral = np.array([np.nan if s.neutral is None else s.neutral for s in REGISTRY], np.float64)
        return np.where(np.isnan(neutral), raw, neutral)

    def _set_device_gauge(self) -> None:
        if self.metrics is None:
            return
        for kind in ("cpu", "cuda"):
            self.metrics.scoring_device.labels(device=kind).set(1 if self.device.type == kind else 0)

    def _fall_back(self, failed: torch.device, err: BaseException, *, at: str) -> Engine:
        log.warning(
            "scoring device %s unusable at %s (%s: %s); scoring on CPU from now on",
            failed,
            at,
            type(err).__name__,
            str(err).splitlines()[0][:200] if str(err) else "",
        )
        if self.metrics is not None:
            self.metrics.scoring_fallbacks.inc()
        return CpuEngine(self.model)

    def _run(self, x: F32, arrived: float, *, reasons: bool) -> tuple[F32, pa.ListArray, npt.NDArray[np.int16]]:
        """Every row of ``x`` through the engine in micro-batches, surviving OOM (split) and device loss (CPU)."""
        with self._lock:
            return self._run_locked(x, arrived, reasons=reasons)

    def _run_locked(self, x: F32, arrived: float, *, reasons: bool) -> tuple[F32, pa.ListArray, npt.NDArray[np.int16]]:
        n = x.shape[0]
        probs: list[F32] = []  # per micro-batch, in row order
        phrases: list[pa.ListArray] = []
        tops: list[npt.NDArray[np.int16]] = []
        m = self.metrics
        pos = 0
        while pos < n:
            rows = max(1, min(self._rows_cap, self.max_batch_rows))
            batches = self._engine.run(x, [(pos + a, pos + b) for a, b in chunk_bounds(n - pos, rows)], reasons=reasons)
            while True:
                try:  # only the engine's errors are device faults; the rest below is plain code
                    item = next(batches, None)
                except Exception as err:
                    self._on_engine_error(err, rows)
                    break
                if item is None:
                    break
                a, b, raw = item
                t0 = time.monotonic()
                probs.append(raw.probs)
                if reasons and raw.top is not None:
                    phrases.append(self._phrases(x[a:b], raw.top))
                    tops.append(raw.top)
                pos = b
                if m is not None:
                    m.scoring_seconds.observe(raw.seconds + time.monotonic() - t0)
                    m.scoring_batch_rows.observe(b - a)
                    m.scoring_queue_delay.observe(max(raw.started - arrived, 0.0))
                    if raw.nonfinite_rows:
                        m.nonfinite_rows.inc(raw.nonfinite_rows)
        if m is not None:
            m.rows_scored.inc(n)
        merged = (pa.concat_arrays(phrases) if len(phrases) > 1 else phrases[0]) if phrases else _EMPTY_REASONS
        top = (np.concatenate(tops) if len(tops) > 1 else tops[0]) if tops else np.full((n, self.k), -1, np.int16)
        if len(probs) > 1:
            return np.concatenate(probs), merged, top
        return (probs[0] if probs else np.zeros((0, 2), np.float32)), merged, top

    def _on_engine_error(self, err: Exception, rows: int) -> None:
        """Out of memory: halve the micro-batch (and keep it halved). Other errors of a device: go to the CPU."""
        if is_oom(err) and rows > 1:
            self._rows_cap = rows // 2
            log.warning("out of memory scoring %d rows on %s; retrying in batches of %d", rows, self.device, rows // 2)
            if self.metrics is not None:
                self.metrics.scoring_oom_splits.inc()
            return
        if self._engine.device.type == "cpu" or is_oom(err):
            raise err
        self._engine = self._fall_back(self._engine.device, err, at="scoring")
        self.device = self._engine.device
        self._rows_cap = self.max_batch_rows
        self._set_device_gauge()

    def _phrases(self, x: F32, top: npt.NDArray[np.int16]) -> pa.ListArray:
        """Top churn drivers per row as short phrases (only features that raise the risk).

        ``top``: per row, the strongest positive attributions' feature indices,
        strongest first, -1 after the last one (a prefix of each row is valid).
        Rows share few distinct (feature, direction, value) triples, so each
        distinct phrase is formatted once (and cached across batches) and the
        per-row lists are assembled as an Arrow list array without a Python
        loop over rows.
        """
        n = x.shape[0]
        valid = top >= 0
        idx = np.where(valid, top, 0).astype(np.intp)
        vals = np.nan_to_num(np.take_along_axis(x, idx, axis=1).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        high = vals >= self._mean_raw[idx]
        cents = np.clip(np.round(vals * 100), 0, _MAX_CENTS).astype(np.int64)
        keys = ((idx.astype(np.int64) * 2 + high) << 40) + cents
        codes, uniq = pd.factorize(keys[valid], sort=False)
        cache = self._phrase_cache
        phrases: list[str] = []
        for key in np.asarray(uniq).tolist():
            phrase = cache.get(key)
            if phrase is None:
                f, is_high, v = key >> 41, (key >> 40) & 1, (key & _MAX_CENTS) / 100
                spec = REGISTRY[f]
                phrase = (spec.high if is_high else spec.low).format(v=v)
                if len(cache) < _CACHE_MAX:
                    cache[key] = phrase
            phrases.append(phrase)
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(valid.sum(axis=1), out=offsets[1:])
        values = pa.array(phrases, pa.string()).take(pa.array(codes.astype(np.int32, copy=False)))
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
