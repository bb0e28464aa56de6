"""The network's inference maths as one fused pass, and the engine contract.

An engine runs log1p/z-score normalisation, the ReLU trunk, the calibrated
heads and the input x gradient attribution of the churn head as one pass over
a batch. :func:`check_against_reference` holds every engine to
:func:`models.network.input_x_gradient` when it is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.network import LifecycleNet, input_x_gradient
from pipelines.core.scores import F32

#: Largest |probability| difference an engine may show against the fp32 reference at build time
#: (bf16 measured at 4.6e-3 on the default model, docs/scoring.md); beyond it that precision is not used.
PRECISION_TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}


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
