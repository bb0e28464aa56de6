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

import logging
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import torch

from models.artifact import Artifact, load_artifact
from models.network import LifecycleNet
from pipelines.core.features import FEATURE_NAMES, REGISTRY, schema_hash
from pipelines.core.scores import _EMPTY_REASONS, F32, N_REASONS, Scores, concat_scores, take_scores
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.scoring.batcher import BatchPolicy, DynamicBatcher, chunk_bounds
from pipelines.scoring.cpu import CpuEngine
from pipelines.scoring.cuda import CudaEngine
from pipelines.scoring.device import Precision, is_oom, resolve_device
from pipelines.scoring.fused import Engine

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "artifacts" / "default"
_MAX_CENTS = (1 << 40) - 1  # phrase-cache key packs the value in 40 bits of cents
_CACHE_MAX = 200_000


# --------------------------------------------------------------------------- fused inference maths


# --------------------------------------------------------------------------- engines


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
