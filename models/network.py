"""The multi-task churn/propensity network.

Pure PyTorch: it knows feature *columns*, not events. Normalisation (log1p of
heavy-tailed columns, then standardisation) and post-hoc calibration (Platt
scaling per head) live inside the module as buffers, so one ``state_dict``
carries everything needed to score raw feature rows identically everywhere.
"""

from __future__ import annotations

import torch
from torch import nn

HEADS: tuple[str, ...] = ("churn_risk", "purchase_propensity")


class LifecycleNet(nn.Module):
    """MLP trunk shared by two logistic heads (churn risk, purchase propensity)."""

    mean: torch.Tensor
    std: torch.Tensor
    log_mask: torch.Tensor
    calib_scale: torch.Tensor
    calib_bias: torch.Tensor
    trunk: nn.Sequential
    head: nn.Linear

    def __init__(self, n_features: int, hidden: tuple[int, ...] = (128, 64), dropout: float = 0.1) -> None:
        super().__init__()
        if n_features <= 0:
            raise ValueError(f"n_features must be positive, got {n_features}")
        self.n_features = n_features
        self.hidden = hidden
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("log_mask", torch.zeros(n_features, dtype=torch.bool))
        self.register_buffer("calib_scale", torch.ones(len(HEADS)))
        self.register_buffer("calib_bias", torch.zeros(len(HEADS)))
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, len(HEADS))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw feature rows -> the model's input space (log1p where flagged, then z-score)."""
        x = torch.where(self.log_mask, torch.log1p(torch.clamp(x, min=0.0)), x)
        return (x - self.mean) / self.std

    def logits_from_z(self, z: torch.Tensor) -> torch.Tensor:
        """Calibrated logits from normalised inputs (n x len(HEADS))."""
        return self.head(self.trunk(z)) * self.calib_scale + self.calib_bias

    def raw_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits from raw features (used while fitting)."""
        return self.head(self.trunk(self.transform(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities per head from raw feature rows."""
        return torch.sigmoid(self.logits_from_z(self.transform(x)))

    @torch.no_grad()
    def set_normalisation(
        self, x: torch.Tensor, log_mask: torch.Tensor, *, baseline: torch.Tensor | None = None
    ) -> None:
        """Fit the normalisation statistics on training rows.

        The scale (``std``) always comes from all rows ``x``. The centre (``mean``)
        comes from ``baseline`` rows when given: it is the reference point of the
        attributions (z = 0, see :func:`input_x_gradient`), so it should be a
        typical user the explanations compare against, e.g. the mean *active*
        user rather than an average dominated by users who left long ago.
        """
        self.log_mask.copy_(log_mask)
        t = self._log(x, log_mask)
        centre = t if baseline is None or baseline.shape[0] == 0 else self._log(baseline, log_mask)
        self.mean.copy_(centre.mean(0))
        self.std.copy_(t.std(0).clamp_min(1e-3))

    @staticmethod
    def _log(x: torch.Tensor, log_mask: torch.Tensor) -> torch.Tensor:
        return torch.where(log_mask, torch.log1p(torch.clamp(x, min=0.0)), x)


def input_x_gradient(model: LifecycleNet, x: torch.Tensor, head: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature attribution of one head's logit: z * d(logit)/dz (input x gradient).

    z is the normalised input, so the baseline is the normalisation centre
    (z = 0; see :meth:`LifecycleNet.set_normalisation`: the mean active user of
    the training data for models built by ``lifecycle train``): a positive
    value means "this feature, at this user's value, pushes the logit up
    compared with that reference user". For a ReLU MLP the gradient is
    ``W1^T (m1 * W2^T (m2 * w_head))`` with the ReLU masks of each row, so it is
    computed here in the same pass as the forward, without autograd (about two
    forwards' cost; :func:`input_x_gradient_autograd` is the reference).
    Returns ``(calibrated probabilities, attributions)``.
    """
    with torch.inference_mode():
        z = model.transform(x)
        h = z
        linears: list[nn.Linear] = []
        masks: list[torch.Tensor] = []
        for layer in model.trunk:
            if isinstance(layer, nn.Linear):
                h = layer(h)
                linears.append(layer)
            elif isinstance(layer, nn.ReLU):
                m = h > 0
                h = h * m
                masks.append(m)
            elif not isinstance(layer, nn.Dropout):  # dropout is the identity in eval mode
                raise TypeError(f"input_x_gradient: unsupported layer {type(layer).__name__}")
        logits = model.head(h) * model.calib_scale + model.calib_bias
        g = (model.head.weight[head] * model.calib_scale[head]).expand(h.shape[0], -1)
        for lin, m in zip(reversed(linears), reversed(masks), strict=True):
            g = (g * m) @ lin.weight
        return torch.sigmoid(logits), z * g


def input_x_gradient_autograd(model: LifecycleNet, x: torch.Tensor, head: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same attribution through autograd: slower, architecture-agnostic; the test oracle."""
    with torch.enable_grad():
        z = model.transform(x).detach().requires_grad_(True)
        logits = model.logits_from_z(z)
        (grad,) = torch.autograd.grad(logits[:, head].sum(), z)
    return torch.sigmoid(logits.detach()), (z.detach() * grad)
