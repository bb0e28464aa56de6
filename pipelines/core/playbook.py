"""Playbooks: next-best-action per scored user, with per-user cooldowns and daily caps.

Operators run each stage with a playbook (welcome coupon for the new, nurture
content for the growing, VIP care, 1:1 reactivation for the dormant, win-back
offers for the churned) and insist users are not over-disturbed. A playbook
file maps stage, tier, at-risk, scores, reasons and marketing consent to an
action (see ``docs/playbooks.md``). Every time a user is scored:

1. A user who received *any* action within ``quiet_hours`` gets nothing new.
2. Rules are tried by priority (highest first, file order on ties). A rule
   applies when its condition holds, its action is not in the user's
   ``cooldown_days`` for that action, and the action's daily cap has room.
   A rule whose action is ``none`` stops the search (suppression rules).
3. The chosen action becomes the user's *current action* (with its rule id and
   time) and is written with every later score of the user until a new action
   replaces it, so no action is lost between two exports.

Daily caps are global per action: the cap is split over the shards
(``cap // shards``, the remainder to the first shards), each shard counts its
own grants per operating day (UTC+8 by default). The sum of the shares is the
cap, so it is never exceeded; it can be under-used when one shard has less
demand than its share. Decisions run on the shard's event clock, so a replay
makes the same decisions. The per-user history and the day's counters are
part of the shard state (:class:`ActionLedger`, snapshotted with it), so
cooldowns and caps survive restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.contract.time import DAY_MS, NEVER
from pipelines.core.features import FEATURE_NAMES, INDEX
from pipelines.core.ledger import ActionLedger
from pipelines.core.rules import (
    Category,
    Condition,
    Located,
    RuleError,
    Vocabulary,
    check_type,
    compile_condition,
    did_you_mean,
    error_at,
    load_yaml,
    need,
    only_keys,
)
from pipelines.core.taxonomy import CONFIG_DIR, SCORES, FeatureContext, Taxonomy, parse_params, resolve

PLAYBOOK_DIR = CONFIG_DIR / "playbooks"
DEFAULT_PLAYBOOK = "lifecycle-5"
NONE = "none"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    name: str
    cooldown_ms: int
    daily_cap: int | None  # None: no cap
    description: str = ""
    #: a marketing action goes only to users with marketing consent, whatever the rules say; a service
    #: action (``marketing: false``, e.g. a VIP's 1:1 care call) may go to anyone scored
    marketing: bool = True


@dataclass(frozen=True, slots=True)
class PlaybookRule:
    id: str
    priority: int
    when: Condition
    action: int  # code into Playbook.actions; -1 = none


@dataclass(frozen=True)
class Playbook:
    """A validated playbook for one taxonomy."""

    name: str
    version: int
    taxonomy: str
    actions: tuple[ActionSpec, ...]
    rules: tuple[PlaybookRule, ...]  # in evaluation order (priority desc, then file order)
    quiet_ms: int
    day_offset_ms: int
    source: str = ""
    fingerprint: str = ""

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.actions)

    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    @cached_property
    def rule_actions(self) -> npt.NDArray[np.int64]:
        """Each rule's action code, by rule position (-1 = none)."""
        return np.array([r.action for r in self.rules], np.int64)

    def cap_share(self, action: int, shard: int, shards: int) -> int | None:
        """This shard's part of an action's daily cap (the parts add up to the cap)."""
        cap = self.actions[action].daily_cap
        if cap is None:
            return None
        return cap // shards + (1 if shard < cap % shards else 0)


def load_playbook(ref: str | Path, taxonomy: Taxonomy) -> Playbook:
    """Load and validate a playbook (shipped name or YAML path) against ``taxonomy``."""
    doc = load_yaml(resolve(ref, PLAYBOOK_DIR))
    return parse_playbook(doc, taxonomy)


def vocabulary(taxonomy: Taxonomy, params: Mapping[str, float]) -> Vocabulary:
    """Names a playbook rule may use."""

    def check_reason(name: str) -> str | None:
        return None if name in INDEX else "not a feature name" + did_you_mean(name, FEATURE_NAMES)

    def has_reason(ctx: Mapping[str, npt.NDArray[Any]], name: str) -> npt.NDArray[np.bool_]:
        top = ctx["reason_features"]
        return np.asarray((top == INDEX[name]).any(axis=1))

    return Vocabulary(
        numbers=frozenset(FEATURE_NAMES) | frozenset(SCORES),
        flags=frozenset({"at_risk", "marketing_consent", "stage_changed"}),
        categories={
            "stage": Category(taxonomy.stages),
            "previous_stage": Category((NONE, *taxonomy.stages)),
            "tier": Category(taxonomy.tiers),
        },
        params=params,
        functions={"reason": (check_reason, has_reason)},
    )


def parse_playbook(doc: Located, taxonomy: Taxonomy) -> Playbook:
    top = check_type(doc, doc.data, dict, ())
    only_keys(
        doc,
        top,
        (
            "name",
            "version",
            "taxonomy",
            "description",
            "params",
            "quiet_hours",
            "day_starts_utc_offset_hours",
            "actions",
            "rules",
        ),
        (),
    )  # noqa: E501
    name = need(doc, top, "name", str, ())
    version = need(doc, top, "version", int, ())
    if version < 1:
        raise doc.error(("version",), f"version must be >= 1, got {version}")
    tax_name = need(doc, top, "taxonomy", str, ())
    if tax_name != taxonomy.name:
        raise doc.error(
            ("taxonomy",),
            f"this playbook is written for taxonomy {tax_name!r}, but the pipeline runs {taxonomy.name!r} "
            f"(set LIFECYCLE_PLAYBOOK to a playbook for {taxonomy.name!r})",
        )
    params = parse_params(doc, top)
    quiet = float(check_type(doc, top.get("quiet_hours", 0), (int, float), ("quiet_hours",)))
    if quiet < 0:
        raise doc.error(("quiet_hours",), f"must be >= 0, got {quiet}")
    offset = float(
        check_type(doc, top.get("day_starts_utc_offset_hours", 8), (int, float), ("day_starts_utc_offset_hours",))
    )
    if not -12 <= offset <= 14:
        raise doc.error(("day_starts_utc_offset_hours",), f"must be a UTC offset in hours (-12..14), got {offset}")

    acts_raw = need(doc, top, "actions", dict, ())
    if not acts_raw:
        raise doc.error(("actions",), "define at least one action")
    actions: list[ActionSpec] = []
    for an, spec in acts_raw.items():
        at = ("actions", an)
        if an == NONE or not an.replace("_", "").isalnum():
            raise doc.error(at, f"action name {an!r}: use letters, digits and _ (and not 'none')")
        spec = spec or {}
        check_type(doc, spec, dict, at)
        only_keys(doc, spec, ("cooldown_days", "daily_cap", "description", "marketing"), at)
        marketing = bool(check_type(doc, spec.get("marketing", True), bool, (*at, "marketing")))
        cd = float(check_type(doc, spec.get("cooldown_days", 0), (int, float), (*at, "cooldown_days")))
        if cd < 0:
            raise doc.error((*at, "cooldown_days"), f"must be >= 0, got {cd}")
        cap = spec.get("daily_cap")
        if cap is not None:
            check_type(doc, cap, int, (*at, "daily_cap"))
            if cap < 0:
                raise doc.error((*at, "daily_cap"), f"must be >= 0, got {cap}")
        actions.append(ActionSpec(an, int(round(cd * DAY_MS)), cap, str(spec.get("description", "")), marketing))
    if len(actions) > 127:
        raise doc.error(("actions",), "at most 127 actions")
    names = [a.name for a in actions]

    vocab = vocabulary(taxonomy, params)
    rules_raw = need(doc, top, "rules", list, ())
    rules: list[tuple[int, int, PlaybookRule]] = []
    ids: set[str] = set()
    for i, r in enumerate(rules_raw):
        at = ("rules", i)
        check_type(doc, r, dict, at)
        only_keys(doc, r, ("id", "priority", "when", "action", "description"), at)
        rid = need(doc, r, "id", str, at)
        if rid in ids:
            raise doc.error((*at, "id"), f"rule id {rid!r} is used twice")
        ids.add(rid)
        prio = need(doc, r, "priority", int, at)
        act = need(doc, r, "action", str, at)
        if act != NONE and act not in names:
            raise doc.error((*at, "action"), f"unknown action {act!r}; actions: {', '.join([*names, NONE])}")
        if "when" not in r:
            raise doc.error(at, "missing required field 'when'")
        cond = compile_condition(r["when"], vocab, error_at(doc, (*at, "when")))
        rules.append((-prio, i, PlaybookRule(rid, prio, cond, names.index(act) if act != NONE else -1)))
    if len(rules) > 30000:
        raise doc.error(("rules",), "at most 30000 rules")
    ordered = tuple(r for _, _, r in sorted(rules, key=lambda t: (t[0], t[1])))
    return Playbook(
        name=name,
        version=version,
        taxonomy=tax_name,
        actions=tuple(actions),
        rules=ordered,
        quiet_ms=int(round(quiet * 3_600_000)),
        day_offset_ms=int(round(offset * 3_600_000)),
        source=str(doc.path),
        fingerprint=hashlib.sha256(doc.path.read_bytes()).hexdigest()[:16],
    )


# ---------------------------------------------------------------------- state and decisions


@dataclass(frozen=True, slots=True)
class Decisions:
    """The current action of each scored row (after this scoring), and which rows got a new one."""

    action: npt.NDArray[np.int8]  # -1 = none
    rule: npt.NDArray[np.int16]  # -1 = none
    at_ms: npt.NDArray[np.int64]  # NEVER = never
    granted: npt.NDArray[np.bool_]  # a new action was chosen now


def decide(
    pb: Playbook,
    ledger: ActionLedger,
    rows: npt.NDArray[np.int64],
    ctx: Mapping[str, npt.NDArray[Any]],
    now_ms: int,
    *,
    shard: int = 0,
    shards: int = 1,
    eligible: npt.NDArray[np.bool_] | None = None,
    rank: npt.NDArray[np.int64] | None = None,
) -> Decisions:
    """Choose actions for the state ``rows`` (unique) scored at ``now_ms``; update the ledger.

    Rows not ``eligible`` get no new action (they report their current one). The ledger is
    the one built for ``pb`` (its rule codes are positions in ``pb.rules``). When a daily cap
    leaves room for fewer users than qualify, those with the lowest ``rank`` (a stable per-user
    key) get it, so the choice depends on the users, not on their rows' numbers; without
    ``rank``, row order.
    """
    n = rows.shape[0]
    if n == 0:
        z = np.zeros(0, np.int64)
        return Decisions(z.astype(np.int8), z.astype(np.int16), z, z.astype(bool))
    ledger.ensure(int(rows.max()) + 1)
    day = (now_ms + pb.day_offset_ms) // DAY_MS
    if day != ledger.day:
        ledger.day = day
        ledger.used[:] = 0
    last = ledger.at_ms(rows)
    open_ = (last == NEVER) | (now_ms - last >= pb.quiet_ms)
    if eligible is not None:
        open_ &= eligible
    chosen = np.full(n, -2, np.int64)  # rule position; -2 = undecided
    for pos, rule in enumerate(pb.rules):
        cand = open_ & (chosen == -2)
        if not cand.any():
            break
        cand &= rule.when.evaluate(ctx, n)
        if not cand.any():
            continue
        if rule.action < 0:  # "none": suppress everything of lower priority
            chosen[cand] = -1
            continue
        spec = pb.actions[rule.action]
        if spec.marketing:  # enforced here, not left to each rule's "and marketing_consent"
            cand &= np.asarray(ctx["marketing_consent"], bool)
        g = ledger.given[rows, rule.action].astype(np.int64) * 1000
        cand &= (g == 0) | (now_ms - g >= spec.cooldown_ms)
        idx = np.flatnonzero(cand)
        share = pb.cap_share(rule.action, shard, shards)
        if share is not None:
            room = max(0, share - int(ledger.used[rule.action]))
            if rank is not None and idx.shape[0] > room:
                idx = np.sort(idx[np.argsort(rank[idx], kind="stable")[:room]])
            idx = idx[:room]
            ledger.used[rule.action] += idx.shape[0]
        chosen[idx] = pos
    granted = chosen >= 0
    if granted.any():
        gr = rows[granted]
        rule_pos = chosen[granted]
        acts = pb.rule_actions[rule_pos]
        ledger.given[gr, acts] = np.uint32(now_ms // 1000)
        ledger.current[gr] = acts.astype(np.int8)
        ledger.rule[gr] = rule_pos.astype(np.int16)
    return Decisions(ledger.current[rows].copy(), ledger.rule[rows].copy(), ledger.at_ms(rows), granted)


def playbook_context(
    features: npt.NDArray[np.float32],
    *,
    churn_risk: npt.NDArray[np.float32],
    purchase_propensity: npt.NDArray[np.float32],
    stage: npt.NDArray[np.int8],
    prev_stage: npt.NDArray[np.int8],
    tier: npt.NDArray[np.int8],
    at_risk: npt.NDArray[np.bool_],
    marketing_consent: npt.NDArray[np.bool_],
    reason_features: npt.NDArray[np.int16],
) -> Mapping[str, npt.NDArray[Any]]:
    """The columns a playbook rule reads (features by name plus the decision inputs)."""
    return FeatureContext(
        features,
        {
            "churn_risk": churn_risk,
            "purchase_propensity": purchase_propensity,
            "stage": stage,
            "previous_stage": prev_stage.astype(np.int16) + 1,
            "stage_changed": prev_stage != stage,
            "tier": tier,
            "at_risk": at_risk,
            "marketing_consent": marketing_consent,
            "reason_features": reason_features,
        },
    )


def action_names(pb: Playbook, codes: npt.NDArray[np.int8]) -> npt.NDArray[np.object_]:
    names = np.array([*pb.action_names, NONE], dtype=object)
    return names[np.where(codes < 0, len(pb.actions), codes)]


def rule_names(ledger: ActionLedger, codes: npt.NDArray[np.int16]) -> npt.NDArray[np.object_]:
    names = np.array([*ledger.rules, ""], dtype=object)
    return names[np.where(codes < 0, len(ledger.rules), codes)]


__all__ = [
    "ActionSpec",
    "Decisions",
    "Playbook",
    "PlaybookRule",
    "RuleError",
    "action_names",
    "decide",
    "load_playbook",
    "playbook_context",
    "rule_names",
]
