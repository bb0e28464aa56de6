"""``lifecycle evaluate``: the model and two baselines (an RFM rule, BG/NBD) on one temporal holdout.

Everything any scorer sees is observable at the origin; labels come from the horizon after it. The report
maths and page are :mod:`models.evaluate` and :mod:`models.report`; this module builds the holdout with the
streaming feature code (:func:`pipelines.offline.training.build_holdout`) and hands the scores over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.baselines import BGNBDParams, RFMRule, bgnbd_p_none, fit_bgnbd
from models.network import HEADS
from models.report import ReportData, write_report
from pipelines.contract.time import DAY_MS, ms_to_iso
from pipelines.core.defaults import MATURE, STAGES, default_taxonomy
from pipelines.core.features import INDEX
from pipelines.offline.history import EventHistory
from pipelines.offline.training import build_holdout
from pipelines.scoring.scorer import Scorer


def evaluate_holdout(
    hist: EventHistory, *, scorer: Scorer, origin_ms: int, as_of: str, out_dir: Path
) -> dict[str, Any]:
    """Model, RFM rule and BG/NBD scored on the same users at ``origin_ms``; writes the report, returns metrics.

    Everything any scorer sees is observable at the origin: the model was
    trained on labels up to its own as-of (checked by the caller), the RFM cells
    are fitted on the users' outcomes in ``(origin - H, origin]``, BG/NBD on
    their histories up to the origin. Labels come from ``(origin, origin + H]``.
    """

    meta = scorer.artifact.meta
    horizon = int(meta["horizon_days"])
    ho = build_holdout(hist.events, origin_ms=origin_ms, horizon_days=horizon)
    if ho.prior_x.shape[0] == 0:
        raise ValueError(f"evaluation needs events from more than {horizon} days before --as-of (the RFM baseline)")
    model_scores = scorer.score(ho.x)
    p_model = np.stack([model_scores.churn_risk, model_scores.purchase_propensity], 1).astype(np.float64)

    # RFM rule: R = days since last activity, F = active days in the last 30, M = lifetime spend
    rfm_cols = ("days_since_active", "active_days_30", "lifetime_value")
    prior = [ho.prior_x[:, INDEX[c]] for c in rfm_cols]
    rfm = RFMRule.fit(prior[0], prior[1], prior[2], ho.prior_y)
    p_rfm = rfm.predict(ho.x[:, INDEX[rfm_cols[0]]], ho.x[:, INDEX[rfm_cols[1]]], ho.x[:, INDEX[rfm_cols[2]]])

    # BG/NBD: active days for churn (P(no active day in H)), orders for propensity (P(>= 1 order in H))
    act, orders = ho.activity, ho.orders
    bg_act = fit_bgnbd(act.x, act.t_x, act.big_t)
    bg_ord = fit_bgnbd(orders.x, orders.t_x, orders.big_t)
    p_bg = np.stack(
        [
            bgnbd_p_none(bg_act, horizon, act.x, act.t_x, act.big_t),
            1.0 - bgnbd_p_none(bg_ord, horizon, orders.x, orders.t_x, orders.big_t),
        ],
        1,
    )
    # evaluation groups users by the default taxonomy's stages (the model's documented population)
    stage = default_taxonomy().assign_stages(ho.x)
    stage_names = np.array(STAGES, dtype=object)[stage]
    n = ho.x.shape[0]
    data = ReportData(
        heads=HEADS,
        labels=ho.y,
        scores={"model": p_model, "rfm": p_rfm, "bgnbd": p_bg},
        scorer_titles={"model": f"model {scorer.model_version}", "rfm": "RFM rule", "bgnbd": "BG/NBD"},
        groups=stage_names,
        group_order=STAGES,
        segments={"all": np.ones(n, bool), "active": stage <= MATURE},
        segment_titles={
            "all": f"every user seen up to {as_of} ({n:,})",
            "active": f"users in an active stage (new/growing/mature) at {as_of} ({int((stage <= MATURE).sum()):,})",
        },
        meta={
            "model": f"{scorer.model_version} (trained with --as-of {meta.get('as_of', '?')}, "
            f"data {meta.get('data_fingerprint', '?')})",
            "features as of": f"end of {as_of} (UTC+8)",
            "labels from": f"{ms_to_iso(origin_ms)} to {ms_to_iso(origin_ms + horizon * DAY_MS)}",
            "horizon (days)": horizon,
            "users": n,
            "events up to as-of / in the label window": f"{ho.events_before:,} / {ho.events_in_window:,}",
            "events rejected by the decoder": hist.n_rejected,
            "churn label": "no activity (any event but unfollow/delete/unsubscribe/leave_group) in the horizon",
            "purchase label": "at least one order in the horizon",
            "RFM rule": f"quintiles of {', '.join(rfm_cols)}; 125 cells, rates fitted on the outcomes of the "
            f"{horizon} days before as-of ({ho.prior_x.shape[0]:,} users)",
            "BG/NBD (active days)": _params(bg_act),
            "BG/NBD (orders)": _params(bg_ord),
        },
        notes=(
            "Temporal holdout: features use only events up to the as-of date, labels only events of the following "
            "horizon, and the model was trained on labels that ended at or before the as-of date.",
        ),
    )
    return write_report(data, out_dir, title=f"Lifecycle model evaluation: {scorer.model_version} at {as_of}")


def _params(p: BGNBDParams) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in p.as_dict().items())
