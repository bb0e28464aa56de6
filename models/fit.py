"""Fitting: class-weighted multi-task BCE, early stopping, Platt calibration.

One AdamW run over mini-batches with an exponential moving average (EMA) of
the weights; after every epoch the EMA weights are scored on held-out
validation rows, the learning rate is halved when they did not improve, and
training stops after ``patience`` such epochs, keeping the best EMA weights.
Then each head gets Platt scaling on the same validation rows.

Deterministic on CPU for a given seed (the test suite checks it), so that a
retrained default model is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.evaluate import head_metrics
from models.network import HEADS, LifecycleNet


@dataclass(frozen=True, slots=True)
class FitConfig:
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 4
    val_fraction: float = 0.2
    seed: int = 0
    #: learning rate multiplier after each epoch without validation improvement (1.0 = constant)
    lr_decay: float = 0.5
    #: exponential moving average of the weights per step (0 = off); validated and kept instead of the raw weights
    ema: float = 0.995


@dataclass(frozen=True, slots=True)
class FitReport:
    epochs_run: int
    best_val_loss: float
    pos_rate: tuple[float, ...]
    history: list[float] = field(default_factory=list)
    #: per head, metrics of the calibrated model on the validation rows (held-out users when grouped)
    val_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0


def fit(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    log_mask: npt.NDArray[np.bool_],
    cfg: FitConfig = FitConfig(),
    *,
    groups: npt.NDArray[np.int64] | None = None,
    baseline_mask: npt.NDArray[np.bool_] | None = None,
    sample_weight: npt.NDArray[np.float32] | None = None,
) -> tuple[LifecycleNet, FitReport]:
    """Train on rows ``x`` (n x f) with labels ``y`` (n x len(HEADS), 0/1).

    Class weighting: each head's positives are weighted by neg/pos so that rare
    outcomes still shape the trunk; calibration afterwards undoes the implied
    prior shift, so the probabilities stay honest.

    ``groups`` (one id per row, e.g. the user) makes the validation split by
    group: the rows of one user at several origins are near-duplicates, and
    splitting them between training and validation would make early stopping
    and calibration look at rows the model has effectively seen.

    ``baseline_mask`` selects the rows whose mean is the normalisation centre,
    i.e. the reference user of the reason-code attributions (default: all rows).

    ``sample_weight`` (one non-negative weight per row) weights the loss, the
    validation loss and the calibration alike, e.g. recent origins above old ones.
    """
    if x.ndim != 2 or y.shape != (x.shape[0], len(HEADS)):
        raise ValueError(f"expected x (n, f) and y (n, {len(HEADS)}), got {x.shape} and {y.shape}")
    if x.shape[0] < 10:
        raise ValueError(f"need at least 10 training rows, got {x.shape[0]}")
    for name, arr in (("groups", groups), ("baseline_mask", baseline_mask), ("sample_weight", sample_weight)):
        if arr is not None and arr.shape != (x.shape[0],):
            raise ValueError(f"{name} must have one value per row, got shape {arr.shape} for {x.shape[0]} rows")
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    val_idx, tr_idx = validation_split(x.shape[0], cfg.val_fraction, gen, groups)
    xt, yt = torch.from_numpy(x[tr_idx]), torch.from_numpy(y[tr_idx])
    xv, yv = torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx])
    w = np.ones(x.shape[0], np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("sample_weight must be finite, non-negative and not all zero")
    wt = torch.from_numpy(w[tr_idx] / w[tr_idx].mean())[:, None]
    wv = torch.from_numpy(w[val_idx] / max(float(w[val_idx].mean()), 1e-12))[:, None]

    model = LifecycleNet(x.shape[1], cfg.hidden, cfg.dropout)
    base = None if baseline_mask is None else torch.from_numpy(x[tr_idx][baseline_mask[tr_idx]])
    model.set_normalisation(xt, torch.from_numpy(log_mask), baseline=base)
    pos = ((yt * wt).sum(0) / wt.sum()).clamp(1e-3, 1 - 1e-3)
    bce = nn.BCEWithLogitsLoss(pos_weight=(1 - pos) / pos, reduction="none")

    def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (bce(logits, target) * weight).mean()

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    params = list(model.parameters())
    shadow = [p.detach().clone() for p in params] if cfg.ema > 0 else []
    best, best_state, bad, history, steps = math.inf, None, 0, [], 0
    epochs_run = 0
    for epoch in range(1, cfg.epochs + 1):
        epochs_run = epoch
        model.train()
        order = torch.from_numpy(gen.permutation(xt.shape[0]))
        for i in range(0, xt.shape[0], cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            opt.zero_grad()
            loss_fn(model.raw_logits(xt[b]), yt[b], wt[b]).backward()
            opt.step()
            if shadow:
                # warm-up: the average starts short and lengthens to cfg.ema, so that a small data set
                # (few steps) is not averaged towards the random initial weights
                steps += 1
                decay = min(cfg.ema, (1.0 + steps) / (10.0 + steps))
                with torch.no_grad():
                    torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - decay)
        model.eval()
        live = _swap(params, shadow) if shadow else None
        with torch.no_grad():
            v = float(loss_fn(model.raw_logits(xv), yv, wv))
        history.append(v)
        if v < best - 1e-4:
            best, bad = v, 0
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
            for group in opt.param_groups:
                group["lr"] *= cfg.lr_decay
        if live is not None:
            _swap(params, live)
        if bad >= cfg.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    calibrate(model, xv, yv, weight=wv[:, 0])
    with torch.no_grad():
        pv = model(xv).numpy()
    val_metrics = {head: head_metrics(yv[:, h].numpy(), pv[:, h]).as_dict() for h, head in enumerate(HEADS)}
    return model, FitReport(
        epochs_run,
        best,
        tuple(float(p) for p in pos),
        history,
        val_metrics=val_metrics,
        n_train=int(tr_idx.shape[0]),
        n_val=int(val_idx.shape[0]),
    )


def _swap(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Put ``values`` into ``params`` in place; return the previous contents."""
    with torch.no_grad():
        old = [p.detach().clone() for p in params]
        for p, v in zip(params, values, strict=True):
            p.copy_(v)
    return old


def validation_split(
    n: int, fraction: float, gen: np.random.Generator, groups: npt.NDArray[np.int64] | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(validation rows, training rows): a random ``fraction`` of the rows, or of the groups."""
    if groups is None:
        perm = gen.permutation(n)
        n_val = max(1, int(n * fraction))
        return np.sort(perm[:n_val]), np.sort(perm[n_val:])
    uniq, inv = np.unique(groups, return_inverse=True)
    val_groups = np.zeros(uniq.shape[0], bool)
    val_groups[gen.permutation(uniq.shape[0])[: max(1, int(uniq.shape[0] * fraction))]] = True
    is_val = val_groups[inv]
    if is_val.all():
        raise ValueError("validation split by groups left no training rows (too few groups)")
    return np.flatnonzero(is_val), np.flatnonzero(~is_val)


def calibrate(model: LifecycleNet, x: torch.Tensor, y: torch.Tensor, *, weight: torch.Tensor | None = None) -> None:
    """Platt scaling per head on held-out rows: logit' = a * logit + b (optionally weighted rows)."""
    with torch.no_grad():
        logits = model.raw_logits(x)
    for h in range(len(HEADS)):
        a = torch.ones(1, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([a, b], lr=0.5, max_iter=100)

        def closure(h: int = h, a: torch.Tensor = a, b: torch.Tensor = b, opt: torch.optim.LBFGS = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(logits[:, h] * a + b, y[:, h], weight=weight)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            model.calib_scale[h] = a.item()
            model.calib_bias[h] = b.item()
