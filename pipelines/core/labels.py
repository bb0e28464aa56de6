"""THE label step: scores -> value tier and at-risk -> playbook actions -> store rows.

One function, :func:`label_rows`, turns scored feature rows into ``user_scores``
(and ``stage_transitions``) rows for the streaming flow, ``lifecycle rescore``
and ``lifecycle score``, so a change to tier or at-risk rules, or to the row
layout, is made once and the three cannot drift apart. What differs between
them is only where the action columns come from, an :data:`ActionSource`:

* :class:`DecideActions` - the stream: the playbook decides, reading and
  updating the shard's :class:`~pipelines.core.ledger.ActionLedger`
  (cooldowns, caps), under the users' marketing consent;
* :class:`CarriedActions` - ``lifecycle rescore``: the stream's decisions as
  stored, unchanged (no action becomes "fresh" again);
* :func:`no_actions` - ``lifecycle score``: offline scoring decides nothing
  (there is no ledger); the action columns are present and null.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipelines.core.evaluated import FeatureRows
from pipelines.core.ledger import ActionLedger
from pipelines.core.playbook import Decisions, Playbook, decide, playbook_context
from pipelines.core.rows import ACTION_COLUMNS, Labels, Records, action_columns, score_records
from pipelines.core.scores import Scores
from pipelines.core.taxonomy import Taxonomy


@dataclass(frozen=True, slots=True)
class Labeled:
    """What the label step produced for one batch of rows."""

    records: list[Records]
    tiers: npt.NDArray[np.int8]
    at_risk: npt.NDArray[np.bool_]
    #: the playbook's decisions (``None`` where the action columns were not decided here)
    decisions: Decisions | None


#: Action columns (:data:`~pipelines.core.rows.ACTION_COLUMNS`) for scored rows, given their tiers and
#: at-risk flags, plus the decisions behind them when they were made now.
ActionSource = Callable[
    [FeatureRows, Scores, npt.NDArray[np.int8], npt.NDArray[np.bool_]],
    tuple[dict[str, pa.Array], Decisions | None],
]


@dataclass(frozen=True, slots=True)
class DecideActions:
    """The stream's action source: the playbook decides now and the ledger remembers (see the module docstring).

    ``marketing_ok``: per row, whether the user may receive marketing (consent); ``shard``
    and ``shards`` split the playbook's daily caps between shards.
    """

    playbook: Playbook
    ledger: ActionLedger
    marketing_ok: npt.NDArray[np.bool_]
    shard: int = 0
    shards: int = 1
    #: per row, the user's stable key: who gets a capped action when the cap binds (never the state row,
    #: whose number depends on when rows were reused)
    user_keys: npt.NDArray[np.int64] | None = None

    def __call__(
        self, rows: FeatureRows, scores: Scores, tiers: npt.NDArray[np.int8], at_risk: npt.NDArray[np.bool_]
    ) -> tuple[dict[str, pa.Array], Decisions | None]:
        # rows of several ticks decide tick by tick, in order: cooldowns, quiet hours and caps see time pass
        versions = np.broadcast_to(np.asarray(rows.version, np.int64), (len(rows),))
        cuts = np.flatnonzero(np.diff(versions)) + 1
        parts: list[Decisions] = []
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
            sl = slice(int(a), int(b))
            ctx = playbook_context(
                rows.features[sl],
                churn_risk=scores.churn_risk[sl],
                purchase_propensity=scores.purchase_propensity[sl],
                stage=rows.stage[sl],
                prev_stage=rows.prev_stage[sl],
                tier=tiers[sl],
                at_risk=at_risk[sl],
                marketing_consent=self.marketing_ok[sl],
                reason_features=scores.reason_features[sl],
            )
            eligible = None if rows.provisional is None else ~rows.provisional[sl]
            parts.append(
                decide(
                    self.playbook,
                    self.ledger,
                    rows.rows[sl],
                    ctx,
                    int(versions[a]),
                    shard=self.shard,
                    shards=self.shards,
                    eligible=eligible,
                    rank=None if self.user_keys is None else self.user_keys[sl],
                )
            )
        acts = parts[0]
        if len(parts) > 1:
            acts = Decisions(
                np.concatenate([d.action for d in parts]),
                np.concatenate([d.rule for d in parts]),
                np.concatenate([d.at_ms for d in parts]),
                np.concatenate([d.granted for d in parts]),
            )
        return action_columns(self.playbook, self.ledger, acts), acts


@dataclass(frozen=True, slots=True)
class CarriedActions:
    """``lifecycle rescore``'s action source: the store's action columns for the same rows, as they are."""

    stored: pa.Table

    def __call__(
        self, rows: FeatureRows, scores: Scores, tiers: npt.NDArray[np.int8], at_risk: npt.NDArray[np.bool_]
    ) -> tuple[dict[str, pa.Array], Decisions | None]:
        if self.stored.num_rows != len(rows):
            raise ValueError(f"{self.stored.num_rows} stored action rows for {len(rows)} scored rows")
        return {c: self.stored.column(c).combine_chunks().cast(t) for c, t in ACTION_COLUMNS.items()}, None


def no_actions(
    rows: FeatureRows, scores: Scores, tiers: npt.NDArray[np.int8], at_risk: npt.NDArray[np.bool_]
) -> tuple[dict[str, pa.Array], Decisions | None]:
    """``lifecycle score``'s action source: nothing is decided offline, every action column is null."""
    return {c: pa.nulls(len(rows), t) for c, t in ACTION_COLUMNS.items()}, None


def label_rows(
    rows: FeatureRows,
    scores: Scores,
    taxonomy: Taxonomy,
    actions: ActionSource,
    *,
    model_version: str,
    scored_at_ms: int,
) -> Labeled:
    """Label scored rows: tier and at-risk by the taxonomy, actions by ``actions``, then the store's rows.

    ``scored_at_ms`` is the wall-clock time written to ``scored_at`` (the only column that
    depends on when, not on what, was scored).
    """
    tiers = taxonomy.assign_tiers(rows.features, scores.churn_risk, scores.purchase_propensity)
    at_risk = taxonomy.at_risk(rows.features, rows.stage, scores.churn_risk, scores.purchase_propensity)
    cols, decisions = actions(rows, scores, tiers, at_risk)
    records = score_records(rows, scores, Labels(taxonomy, tiers, at_risk, cols), model_version, scored_at_ms)
    return Labeled(records, tiers, at_risk, decisions)
