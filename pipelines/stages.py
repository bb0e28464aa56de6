"""Lifecycle stage, value tier and at-risk rules: pure functions over feature matrices.

The stage is a rule over features (not over model scores), so it is stable,
explainable, and recomputable for silent users from state alone: silence is
the main churn signal, and a user who sends nothing must still move to
``dormant``/``churned`` on time. The model's churn risk adds the *at-risk*
early warning (预流失) on top of the active stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.features import INDEX

STAGES: tuple[str, ...] = ("new", "growing", "mature", "dormant", "churned")
TIERS: tuple[str, ...] = ("vip", "regular", "potential")
NEW, GROWING, MATURE, DORMANT, CHURNED = range(5)
VIP, REGULAR, POTENTIAL = range(3)


@dataclass(frozen=True, slots=True)
class StageRules:
    """Thresholds of the default 5-stage taxonomy (导入/成长/成熟/休眠/流失)."""

    new_days: float = 14.0  # acquired less than this many days ago and no order yet -> new
    dormant_after_days: float = 14.0  # silence that makes an active user dormant
    churned_after_days: float = 45.0  # silence that makes a user churned
    mature_min_orders: int = 2  # repeat buyer ...
    mature_min_active_days_30: int = 3  # ... who is still engaged
    vip_value_90d: float = 1000.0  # decayed 90-day spend (CNY) for the VIP tier
    at_risk_threshold: float = 0.6  # churn risk that flags an active user as at-risk

    def __post_init__(self) -> None:
        if not 0 < self.dormant_after_days < self.churned_after_days:
            raise ValueError(
                f"need 0 < dormant_after_days ({self.dormant_after_days}) < churned_after_days "
                f"({self.churned_after_days})"
            )
        if not 0.0 <= self.at_risk_threshold <= 1.0:
            raise ValueError(f"at_risk_threshold must be in [0, 1], got {self.at_risk_threshold}")


def assign_stages(f: npt.NDArray[np.float32], rules: StageRules) -> npt.NDArray[np.int8]:
    """Stage code per feature row. Precedence: churned > dormant > new > mature > growing."""
    silence = f[:, INDEX["days_since_active"]]
    exited = f[:, INDEX["exited"]] > 0.5
    orders = f[:, INDEX["lifetime_orders"]]
    stage = np.full(f.shape[0], GROWING, np.int8)
    mature = (orders >= rules.mature_min_orders) & (f[:, INDEX["active_days_30"]] >= rules.mature_min_active_days_30)
    stage[mature] = MATURE
    new = (f[:, INDEX["days_since_acquire"]] < rules.new_days) & (orders < 1)
    stage[new] = NEW
    stage[silence >= rules.dormant_after_days] = DORMANT
    stage[exited | (silence >= rules.churned_after_days)] = CHURNED
    return stage


def assign_tiers(f: npt.NDArray[np.float32], rules: StageRules) -> npt.NDArray[np.int8]:
    """Value tier per row from spend and order history (RFM-style)."""
    tier = np.full(f.shape[0], POTENTIAL, np.int8)
    tier[f[:, INDEX["lifetime_orders"]] >= 1] = REGULAR
    tier[f[:, INDEX["order_value_90d"]] >= rules.vip_value_90d] = VIP
    return tier


def at_risk(
    stage: npt.NDArray[np.int8], churn_risk: npt.NDArray[np.float32], rules: StageRules
) -> npt.NDArray[np.bool_]:
    """Early warning: still in an active stage, but the model expects churn."""
    return (stage <= MATURE) & (churn_risk >= rules.at_risk_threshold)
