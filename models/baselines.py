"""Baselines the model must beat: an RFM rule and the BG/NBD model. Pure numpy/torch.

**RFM rule.** The classic segmentation of operators: every user gets a quintile
score for Recency, Frequency and Monetary value (quintile edges from the fitting
data), and each of the 5 x 5 x 5 cells gets, per outcome, the rate observed in
that cell on the fitting data, shrunk towards the overall rate by
``prior_strength`` pseudo-users (so small cells do not produce 0 or 1). What R,
F and M are is the caller's choice; see ``docs/model.md`` for ours.

**BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy way").
While alive, a customer transacts as a Poisson process with rate
``lambda ~ Gamma(r, alpha)``; after each transaction they drop out with
probability ``p ~ Beta(a, b)``. From a customer's summary ``(x, t_x, T)``
(repeat transactions, time of the last one, time observed, all measured from
the customer's first transaction) the likelihood is (eq. 6 of the paper)::

    L = B(a, b + x) / B(a, b) * Gamma(r + x) alpha^r / (Gamma(r) (alpha + T)^(r + x))
      + [x > 0] B(a + 1, b + x - 1) / B(a, b) * Gamma(r + x) alpha^r / (Gamma(r) (alpha + t_x)^(r + x))

:func:`fit_bgnbd` maximises its sum over customers with L-BFGS on the log
parameters (torch, float64, no scipy). Predictions use

* ``P(alive | x, t_x, T) = 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x))``
* ``P(no transaction in (T, T + t]) = 1 - P(alive) + P(alive) ((alpha + T) / (alpha + T + t))^(r + x)``:
  a customer who is alive at ``T`` cannot drop out without transacting, and
  given alive the rate's posterior is ``Gamma(r + x, alpha + T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- RFM


@dataclass(frozen=True, slots=True)
class RFMRule:
    """Quintile R, F, M cells with a per-cell outcome rate (see the module docstring)."""

    edges: tuple[FloatArray, FloatArray, FloatArray]  # inner quantile cut points of R, F, M
    rates: FloatArray  # (n_bins, n_bins, n_bins, n_outcomes)

    @classmethod
    def fit(
        cls,
        r: npt.ArrayLike,
        f: npt.ArrayLike,
        m: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        n_bins: int = 5,
        prior_strength: float = 20.0,
    ) -> RFMRule:
        """Quintile edges and smoothed cell rates from ``y`` (n x outcomes, 0/1)."""
        cols = [np.asarray(v, np.float64) for v in (r, f, m)]
        ya = np.asarray(y, np.float64)
        if ya.ndim == 1:
            ya = ya[:, None]
        if any(c.shape[0] != ya.shape[0] for c in cols):
            raise ValueError("r, f, m and y must have the same number of rows")
        if ya.shape[0] == 0:
            raise ValueError("no rows to fit the RFM rule on")
        qs = np.linspace(0, 1, n_bins + 1)[1:-1]
        edges = tuple(np.quantile(c, qs) for c in cols)
        cell = _rfm_cell(cols, edges, n_bins)  # type: ignore[arg-type]
        n_cells = n_bins**3
        count = np.bincount(cell, minlength=n_cells).astype(np.float64)
        base = ya.mean(0)
        rates = np.empty((n_cells, ya.shape[1]))
        for k in range(ya.shape[1]):
            pos = np.bincount(cell, weights=ya[:, k], minlength=n_cells)
            rates[:, k] = (pos + prior_strength * base[k]) / (count + prior_strength)
        return cls(edges, rates.reshape(n_bins, n_bins, n_bins, ya.shape[1]))  # type: ignore[arg-type]

    def predict(self, r: npt.ArrayLike, f: npt.ArrayLike, m: npt.ArrayLike) -> FloatArray:
        """Outcome probabilities (n x outcomes) of each user's RFM cell."""
        n_bins = self.rates.shape[0]
        cols = [np.asarray(v, np.float64) for v in (r, f, m)]
        cell = _rfm_cell(cols, self.edges, n_bins)
        out: FloatArray = self.rates.reshape(n_bins**3, -1)[cell]
        return out

    def scores(self, r: npt.ArrayLike, f: npt.ArrayLike, m: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The quintile scores (n x 3, each 1..n_bins) behind each prediction, for reports."""
        cols = [np.asarray(v, np.float64) for v in (r, f, m)]
        return np.stack([np.searchsorted(e, c, side="right") + 1 for e, c in zip(self.edges, cols, strict=True)], 1)


def _rfm_cell(
    cols: list[FloatArray], edges: tuple[FloatArray, FloatArray, FloatArray], n_bins: int
) -> npt.NDArray[np.int64]:
    r, f, m = (np.searchsorted(e, c, side="right") for e, c in zip(edges, cols, strict=True))
    cell: npt.NDArray[np.int64] = ((r * n_bins + f) * n_bins + m).astype(np.int64)
    return cell


# --------------------------------------------------------------------------- BG/NBD


@dataclass(frozen=True, slots=True)
class BGNBDParams:
    """BG/NBD parameters: rate heterogeneity Gamma(r, alpha), dropout Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


def _t(v: npt.ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v, np.float64))


def _check_summary(x: npt.ArrayLike, t_x: npt.ArrayLike, big_t: npt.ArrayLike) -> tuple[FloatArray, ...]:
    xa, ta, ba = (np.asarray(v, np.float64) for v in (x, t_x, big_t))
    if not (xa.shape == ta.shape == ba.shape):
        raise ValueError(f"x, t_x and T differ in shape: {xa.shape}, {ta.shape}, {ba.shape}")
    if (xa < 0).any() or (ta < 0).any() or (ta > ba + 1e-9).any():
        raise ValueError("BG/NBD needs x >= 0 and 0 <= t_x <= T")
    return xa, ta, ba


def _log_lik(log_params: torch.Tensor, x: torch.Tensor, t_x: torch.Tensor, big_t: torch.Tensor) -> torch.Tensor:
    """Per-customer log-likelihood (FHL 2005, eq. 6), parameters on the log scale."""
    r, alpha, a, b = torch.exp(log_params)
    lg = torch.lgamma
    a1 = lg(r + x) - lg(r) + r * torch.log(alpha)
    a2 = lg(a + b) + lg(b + x) - lg(b) - lg(a + b + x)
    a3 = -(r + x) * torch.log(alpha + big_t)
    rep = x > 0
    a4 = torch.log(a) - torch.log(torch.where(rep, b + x - 1, b)) - (r + x) * torch.log(alpha + t_x)
    a4 = torch.where(rep, a4, torch.full_like(a4, -torch.inf))
    return a1 + a2 + torch.logaddexp(a3, a4)


def bgnbd_log_likelihood(params: BGNBDParams, x: npt.ArrayLike, t_x: npt.ArrayLike, big_t: npt.ArrayLike) -> FloatArray:
    """Per-customer log-likelihood of ``(x, t_x, T)`` under ``params``."""
    xa, ta, ba = _check_summary(x, t_x, big_t)
    lp = torch.log(torch.tensor([params.r, params.alpha, params.a, params.b], dtype=torch.float64))
    out: FloatArray = _log_lik(lp, _t(xa), _t(ta), _t(ba)).numpy()
    return out


def fit_bgnbd(
    x: npt.ArrayLike,
    t_x: npt.ArrayLike,
    big_t: npt.ArrayLike,
    *,
    init: BGNBDParams | None = None,
    max_iter: int = 500,
) -> BGNBDParams:
    """Maximum-likelihood BG/NBD parameters (L-BFGS on log parameters, deterministic).

    The default start puts the mean rate ``r / alpha`` at the observed mean rate,
    so one start suits times in days or in weeks.
    """
    xa, ta, ba = _check_summary(x, t_x, big_t)
    if xa.shape[0] == 0:
        raise ValueError("no customers to fit BG/NBD on")
    xt, tt, bt = _t(xa), _t(ta), _t(ba)
    if init is None:
        init = BGNBDParams(1.0, max(float(ba.mean()), 1e-3) / max(float(xa.mean()), 1e-3), 1.0, 1.0)
    lp = torch.log(torch.tensor([init.r, init.alpha, init.a, init.b], dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.LBFGS([lp], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    n = float(xa.shape[0])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # mean negative log-likelihood, with a whisper of ridge on log parameters against runaway a, b
        loss = -_log_lik(lp, xt, tt, bt).sum() / n + 1e-6 * (lp**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    r, alpha, a, b = (float(v) for v in torch.exp(lp.detach()))
    if not all(np.isfinite([r, alpha, a, b])):
        raise ValueError("BG/NBD fit diverged")
    return BGNBDParams(r, alpha, a, b)


def bgnbd_p_alive(params: BGNBDParams, x: npt.ArrayLike, t_x: npt.ArrayLike, big_t: npt.ArrayLike) -> FloatArray:
    """P(still alive at T | x, t_x, T); 1 for customers without repeat transactions."""
    xa, ta, ba = _check_summary(x, t_x, big_t)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    with np.errstate(divide="ignore", over="ignore"):
        log_ratio = (
            np.log(a) - np.log(np.maximum(b + xa - 1, 1e-12)) + (r + xa) * (np.log(alpha + ba) - np.log(alpha + ta))
        )
        odds = np.exp(np.minimum(log_ratio, 700.0))
    p: FloatArray = np.where(xa > 0, 1.0 / (1.0 + odds), 1.0)
    return p


def bgnbd_p_none(
    params: BGNBDParams, t: float, x: npt.ArrayLike, t_x: npt.ArrayLike, big_t: npt.ArrayLike
) -> FloatArray:
    """P(no transaction in (T, T + t] | x, t_x, T)."""
    xa, ta, ba = _check_summary(x, t_x, big_t)
    alive = bgnbd_p_alive(params, xa, ta, ba)
    a = params.alpha
    quiet = np.exp((params.r + xa) * (np.log(a + ba) - np.log(a + ba + t)))
    p: FloatArray = 1.0 - alive + alive * quiet
    return p


def simulate_bgnbd(
    params: BGNBDParams, big_t: npt.ArrayLike, rng: np.random.Generator, *, extra: float = 0.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Draw customers observed for ``T`` under the BG/NBD process (tests, sanity checks).

    Returns ``(x, t_x, x_extra)``: repeat transactions and the time of the last
    one up to ``T``, and the transactions in ``(T, T + extra]`` of the same path.
    """
    ba = np.asarray(big_t, np.float64)
    n = ba.shape[0]
    lam = np.asarray(rng.gamma(params.r, 1.0 / params.alpha, n), np.float64)
    p = np.asarray(rng.beta(params.a, params.b, n), np.float64)
    x = np.zeros(n)
    t_x = np.zeros(n)
    x_extra = np.zeros(n)
    now = np.zeros(n)
    alive = np.ones(n, bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        now[idx] += rng.exponential(1.0 / np.maximum(lam[idx], 1e-12))
        done = now[idx] > ba[idx] + extra
        alive[idx[done]] = False
        go = idx[~done]
        inside = now[go] <= ba[go]
        x[go[inside]] += 1
        t_x[go[inside]] = now[go[inside]]
        x_extra[go[~inside]] += 1
        alive[go[rng.random(go.shape[0]) < p[go]]] = False
    return x, t_x, x_extra
