"""Fitting: class-weighted multi-task BCE, early stopping, Platt calibration.

Deterministic on CPU for a given seed (the test suite checks it), so that a
retrained default model is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

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


@dataclass(frozen=True, slots=True)
class FitReport:
    epochs_run: int
    best_val_loss: float
    pos_rate: tuple[float, ...]
    history: list[float] = field(default_factory=list)


def fit(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    log_mask: npt.NDArray[np.bool_],
    cfg: FitConfig = FitConfig(),
) -> tuple[LifecycleNet, FitReport]:
    """Train on rows ``x`` (n x f) with labels ``y`` (n x len(HEADS), 0/1).

    Class weighting: each head's positives are weighted by neg/pos so that rare
    outcomes still shape the trunk; calibration afterwards undoes the implied
    prior shift, so the probabilities stay honest.
    """
    if x.ndim != 2 or y.shape != (x.shape[0], len(HEADS)):
        raise ValueError(f"expected x (n, f) and y (n, {len(HEADS)}), got {x.shape} and {y.shape}")
    if x.shape[0] < 10:
        raise ValueError(f"need at least 10 training rows, got {x.shape[0]}")
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    perm = gen.permutation(x.shape[0])
    n_val = max(1, int(x.shape[0] * cfg.val_fraction))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    xt, yt = torch.from_numpy(x[tr_idx]), torch.from_numpy(y[tr_idx])
    xv, yv = torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx])

    model = LifecycleNet(x.shape[1], cfg.hidden, cfg.dropout)
    model.set_normalisation(xt, torch.from_numpy(log_mask))
    pos = yt.mean(0).clamp(1e-3, 1 - 1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(1 - pos) / pos)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    best, best_state, bad, history = math.inf, None, 0, []
    epochs_run = 0
    for epoch in range(1, cfg.epochs + 1):
        epochs_run = epoch
        model.train()
        order = torch.from_numpy(gen.permutation(xt.shape[0]))
        for i in range(0, xt.shape[0], cfg.batch_size):
            b = order[i : i + cfg.batch_size]
            opt.zero_grad()
            loss_fn(model.raw_logits(xt[b]), yt[b]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            v = float(loss_fn(model.raw_logits(xv), yv))
        history.append(v)
        if v < best - 1e-4:
            best, bad = v, 0
            best_state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    calibrate(model, xv, yv)
    return model, FitReport(epochs_run, best, tuple(float(p) for p in pos), history)


def calibrate(model: LifecycleNet, x: torch.Tensor, y: torch.Tensor) -> None:
    """Platt scaling per head on held-out rows: logit' = a * logit + b."""
    with torch.no_grad():
        logits = model.raw_logits(x)
    for h in range(len(HEADS)):
        a = torch.ones(1, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([a, b], lr=0.5, max_iter=100)

        def closure(h: int = h, a: torch.Tensor = a, b: torch.Tensor = b, opt: torch.optim.LBFGS = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(logits[:, h] * a + b, y[:, h])
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            model.calib_scale[h] = a.item()
            model.calib_bias[h] = b.item()
