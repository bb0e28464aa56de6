"""The CPU engine: fp32 fused maths in cache-sized tiles."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from models.network import LifecycleNet, input_x_gradient
from pipelines.core.scores import F32, N_REASONS
from pipelines.scoring.batcher import chunk_bounds
from pipelines.scoring.fused import (
    PRECISION_TOLERANCE,
    FusedWeights,
    RawScores,
    check_against_reference,
    fused_forward,
    top_positive,
)

log = logging.getLogger(__name__)


#: CPU tile: every tile has exactly this many rows (the last one zero-padded). A matmul's rounding depends
#: on its shape, so scoring each row in a tile of one fixed shape makes its score independent of which
#: batch, and where in it, the row came: results are a function of the events, not of batch sizes.
#: 512 x (71 + 128 + 64) floats (~0.5 MB) stay in L2.
CPU_TILE_ROWS = 512


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

    def _fixed(self, x: torch.Tensor, reasons: bool) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """One tile of exactly ``tile_rows`` rows (zero-padded): the same shape, so the same rounding, always."""
        n = x.shape[0]
        if n == self.tile_rows:
            return self._tile(x, reasons)
        pad = torch.zeros((self.tile_rows, x.shape[1]), dtype=x.dtype)
        pad[:n] = x
        p, tp, bad = self._tile(pad, reasons)
        return p[:n], tp[:n] if tp is not None else None, bad

    def run(self, x: F32, bounds: Sequence[tuple[int, int]], *, reasons: bool) -> Iterator[tuple[int, int, RawScores]]:
        xt = torch.from_numpy(x)
        for a, b in bounds:
            t0 = time.monotonic()
            with torch.inference_mode():
                if b - a <= self.tile_rows:  # the common case, without the bookkeeping of tiles
                    p, tp, bad = self._fixed(xt[a:b], reasons)
                    raw = RawScores(p.numpy(), tp.numpy() if tp is not None else None, bad, t0, 0.0)
                else:
                    probs = np.empty((b - a, 2), np.float32)
                    top = np.empty((b - a, self.k), np.int16) if reasons else None
                    bad = 0
                    for i, j in chunk_bounds(b - a, self.tile_rows):
                        p, tp, nb = self._fixed(xt[a + i : a + j], reasons)
                        probs[i:j] = p.numpy()
                        if top is not None and tp is not None:
                            top[i:j] = tp.numpy()
                        bad += nb
                    raw = RawScores(probs, top, bad, t0, 0.0)
            yield a, b, dataclasses.replace(raw, seconds=time.monotonic() - t0)
