"""Arrow tables in the layout of the store's tables (see ``sql/migrations``).

Pure functions: the scoring step and the dead-letter path build these, and the
sinks insert them unchanged. Column names and types match the DDL exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipelines.contract.events import Rejection
from pipelines.core.evaluated import FeatureRows
from pipelines.core.ledger import ActionLedger
from pipelines.core.playbook import Decisions, Playbook, action_names, rule_names
from pipelines.core.scores import Scores
from pipelines.core.taxonomy import Taxonomy

_TS = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True, slots=True)
class Records:
    """Rows for one table, with what metrics need to know about them."""

    table: str
    data: pa.Table
    #: event times of the rows whose scores measure freshness (user_scores only)
    last_event_ms: npt.NDArray[np.int64] | None = None
    read_at_ms: int = 0


#: The playbook/action columns of ``user_scores`` and ``stage_transitions``, with their Arrow types.
ACTION_COLUMNS: dict[str, pa.DataType] = {
    "playbook": pa.string(),
    "playbook_version": pa.uint32(),
    "action": pa.string(),
    "action_rule": pa.string(),
    "action_at": _TS,
}


@dataclass(frozen=True, slots=True)
class Labels:
    """What a score row is labelled with besides the model's output.

    ``actions``: the :data:`ACTION_COLUMNS` for the rows, as :func:`action_columns`
    builds them from the playbook's decisions (the flow) or as read from the store
    (a rescore keeps the stream's decisions).
    """

    taxonomy: Taxonomy
    tiers: npt.NDArray[np.int8]
    at_risk: npt.NDArray[np.bool_]
    actions: dict[str, pa.Array]


def action_columns(pb: Playbook, ledger: ActionLedger, d: Decisions) -> dict[str, pa.Array]:
    """:data:`ACTION_COLUMNS` of the playbook's decisions, one value per scored row."""
    n = d.action.shape[0]
    return {
        "playbook": pa.array(np.full(n, pb.name, object), ACTION_COLUMNS["playbook"]),
        "playbook_version": pa.array(np.full(n, pb.version, np.uint32), ACTION_COLUMNS["playbook_version"]),
        "action": pa.array(action_names(pb, d.action), ACTION_COLUMNS["action"]),
        "action_rule": pa.array(rule_names(ledger, d.rule), ACTION_COLUMNS["action_rule"]),
        "action_at": pa.array(d.at_ms, ACTION_COLUMNS["action_at"], mask=d.action < 0),
    }


def _take(cols: dict[str, pa.Array], idx: npt.NDArray[np.int64]) -> dict[str, pa.Array]:
    ix = pa.array(idx)
    return {k: v.take(ix) for k, v in cols.items()}


def score_records(
    rows: FeatureRows,
    scores: Scores,
    labels: Labels,
    model_version: str,
    scored_at_ms: int,
) -> list[Records]:
    """``user_scores`` rows for every scored user, ``stage_transitions`` for changed stages."""
    n = len(rows)
    stage_names = np.array(labels.taxonomy.stages, dtype=object)
    stage = stage_names[rows.stage]
    reasons = scores.reasons
    version = np.broadcast_to(np.asarray(rows.version, np.int64), (n,)).astype(np.uint64)
    tax = labels.taxonomy
    acts = {
        "taxonomy": pa.array(np.full(n, tax.name, object), pa.string()),
        "taxonomy_version": pa.array(np.full(n, tax.version, np.uint32), pa.uint32()),
        **labels.actions,
    }
    user_scores = pa.table(
        {
            "user_id": pa.array(rows.user_id, pa.string()),
            "stage": pa.array(stage, pa.string()),
            "tier": pa.array(np.array(labels.taxonomy.tiers, dtype=object)[labels.tiers], pa.string()),
            "at_risk": pa.array(labels.at_risk, pa.bool_()),
            "churn_risk": pa.array(scores.churn_risk, pa.float32()),
            "purchase_propensity": pa.array(scores.purchase_propensity, pa.float32()),
            "reasons": reasons,
            "model_version": pa.array(np.full(n, model_version, object), pa.string()),
            "last_event_at": pa.array(rows.last_event_ms, _TS),
            "scored_at": pa.array(np.full(n, scored_at_ms, np.int64), _TS),
            "version": pa.array(version, pa.uint64()),
            **acts,
        }
    )
    out = [Records("user_scores", user_scores, rows.last_event_ms[rows.from_events], rows.read_at_ms)]
    changed = np.flatnonzero(rows.prev_stage != rows.stage)
    if changed.shape[0]:
        prev = np.where(rows.prev_stage[changed] < 0, "none", stage_names[np.maximum(rows.prev_stage[changed], 0)])
        out.append(
            Records(
                "stage_transitions",
                pa.table(
                    {
                        "user_id": pa.array(rows.user_id[changed], pa.string()),
                        "from_stage": pa.array(prev, pa.string()),
                        "to_stage": pa.array(stage[changed], pa.string()),
                        "at": pa.array(version[changed].astype(np.int64), _TS),
                        "churn_risk": pa.array(scores.churn_risk[changed], pa.float32()),
                        "purchase_propensity": pa.array(scores.purchase_propensity[changed], pa.float32()),
                        "reasons": reasons.take(pa.array(changed)),
                        "model_version": pa.array(np.full(changed.shape[0], model_version, object), pa.string()),
                        "version": pa.array(version[changed], pa.uint64()),
                        **_take(acts, changed),
                    }
                ),
            )
        )
    return out


def reject_records(rejects: list[Rejection], received_at_ms: int) -> Records:
    """``rejected_events`` rows (payload kept as bytes; invalid UTF-8 survives as-is)."""
    n = len(rejects)
    return Records(
        "rejected_events",
        pa.table(
            {
                "received_at": pa.array(np.full(n, received_at_ms, np.int64), _TS),
                "reason": pa.array([r.reason.value for r in rejects], pa.string()),
                "detail": pa.array([r.detail for r in rejects], pa.string()),
                "source": pa.array([r.source for r in rejects], pa.string()),
                "partition": pa.array([r.partition for r in rejects], pa.int32()),
                "offset": pa.array([r.offset for r in rejects], pa.int64()),
                "payload": pa.array([r.payload for r in rejects], pa.binary()),
            }
        ),
    )
