"""Stage taxonomies as configuration: stages, value tiers and the at-risk flag from a YAML file.

Brands run different stage models over the same users (the 5-stage lifecycle
导入/成长/成熟/休眠/流失, an AIDA-style funnel, new/active/paying/churned groups),
so the stage rules are data, not code: a YAML file (see ``docs/playbooks.md``
and the shipped files in ``pipelines/config/taxonomies/``) validated at start-up.

Why stages read only features (and tiers / at-risk may read scores): the stage
is decided in the shard step, *before* scoring, because a stage change must
never wait for the scoring cadence and a silent user must move to a later
stage on a timer, from state alone. Tiers and the at-risk flag are decided
after scoring and may use ``churn_risk`` / ``purchase_propensity``.

Timers: every comparison of a time-driven feature (``days_since_active``,
``days_since_acquire``, ``days_since_order``, ``days_since_message``, ``tenure_days``)
with a constant in any rule is a moment when a user's label may change with no new
event; those thresholds (``timers``) drive :class:`pipelines.core.timers.Timers`, so
any taxonomy gets exact, event-free moves (a ``new`` user stops being new on time,
a silent one becomes dormant on time). ``silence_days`` lists the silence thresholds
of the stage rules alone.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipelines.core.features import FEATURE_NAMES, INDEX, TIMED_FEATURES
from pipelines.core.rules import (
    Category,
    Condition,
    Located,
    RuleError,
    Vocabulary,
    check_type,
    compile_condition,
    error_at,
    load_yaml,
    need,
    only_keys,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
TAXONOMY_DIR = CONFIG_DIR / "taxonomies"
DEFAULT_TAXONOMY = "lifecycle-5"
SCORES = ("churn_risk", "purchase_propensity")
F32 = npt.NDArray[np.float32]

STRICT_DELAY_MS = 60_000
_STAGE_WHY = "stages are decided before scoring (so a stage change is never delayed); use it in tiers or at_risk"


class FeatureContext(Mapping[str, npt.NDArray[Any]]):
    """Rule context over a feature matrix (columns by name, no copies) plus extra columns."""

    def __init__(self, features: F32, extra: Mapping[str, npt.NDArray[Any]] | None = None) -> None:
        self.f = features
        self.extra = dict(extra or {})

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        if name in self.extra:
            return self.extra[name]
        return self.f[:, INDEX[name]]

    def __iter__(self) -> Iterator[str]:
        return iter([*FEATURE_NAMES, *self.extra])

    def __len__(self) -> int:
        return len(FEATURE_NAMES) + len(self.extra)


@dataclass(frozen=True)
class Taxonomy:
    """A validated taxonomy. Stage and tier codes are positions in ``stages`` / ``tiers``."""

    name: str
    version: int
    description: str
    stages: tuple[str, ...]
    labels: tuple[str, ...]
    #: stage codes in the order their rules are checked (first match wins; the last is the fallback)
    precedence: tuple[int, ...]
    stage_rules: tuple[Condition, ...]  # by stage code
    tiers: tuple[str, ...]
    tier_rules: tuple[Condition, ...]  # by tier code, checked in that order
    at_risk_rule: Condition
    params: Mapping[str, float] = field(default_factory=dict)
    #: silence (days) at which some stage rule may change its answer: the silence timers
    silence_days: tuple[float, ...] = ()
    #: timers fire this long after the last activity (strict ">" thresholds one minute later)
    silence_ms: tuple[int, ...] = ()
    #: (state timestamp column, ms) for every ``days_since_*``/``tenure_days`` comparison in any rule: the
    #: instants at which a label may change without a new event (:class:`pipelines.core.timers.Timers`)
    timers: tuple[tuple[str, int], ...] = ()
    #: per score, one value from every region the at-risk rule's constants cut it into (the rule is constant
    #: within a region), when the rule reads scores only in comparisons with constants; None: it does not
    at_risk_points: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    source: str = ""
    fingerprint: str = ""

    def assign_stages(self, f: F32) -> npt.NDArray[np.int8]:
        """Stage code per feature row: the first stage (in precedence order) whose rule holds."""
        return _first_match(FeatureContext(f), f.shape[0], [(c, self.stage_rules[c]) for c in self.precedence])

    def assign_tiers(self, f: F32, churn_risk: F32, propensity: F32) -> npt.NDArray[np.int8]:
        """Tier code per row: the first tier (in file order) whose rule holds."""
        ctx = FeatureContext(f, {"churn_risk": churn_risk, "purchase_propensity": propensity})
        return _first_match(ctx, f.shape[0], list(enumerate(self.tier_rules)))

    def at_risk(self, f: F32, stage: npt.NDArray[np.int8], churn_risk: F32, propensity: F32) -> npt.NDArray[np.bool_]:
        ctx = FeatureContext(f, {"churn_risk": churn_risk, "purchase_propensity": propensity, "stage": stage})
        return self.at_risk_rule.evaluate(ctx, f.shape[0]).copy()

    def at_risk_reads_scores(self, f: F32, stage: npt.NDArray[np.int8]) -> npt.NDArray[np.bool_]:
        """Rows whose at-risk answer depends on the scores (the others get it from features and stage alone).

        Exact when the rule compares scores with constants only (:func:`score_points`): the answer is
        then the same for any scores exactly when it is the same at one point of every region.
        """
        n = f.shape[0]
        if self.at_risk_points is None:
            return np.ones(n, bool)
        churn_pts, prop_pts = self.at_risk_points
        first: npt.NDArray[np.bool_] | None = None
        differs = np.zeros(n, bool)
        for c, p in itertools.product(churn_pts, prop_pts):
            got = self.at_risk(f, stage, np.full(n, c, np.float32), np.full(n, p, np.float32))
            if first is None:
                first = got
            else:
                differs |= got != first
        return differs


def score_points(rule: Condition) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """For a rule that reads ``churn_risk``/``purchase_propensity`` only as ``score <op> constant``: a value of
    each score from every region its constants cut the line into; None when it reads them any other way.
    """
    try:
        tree = ast.parse(rule.source, mode="eval")
    except SyntaxError:
        return None
    reads = sum(1 for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in SCORES)
    compared = [(v, c) for v, _, c in rule.thresholds if v in SCORES]
    if reads != len(compared):
        return None
    out: list[tuple[float, ...]] = []
    for name in SCORES:
        cuts = sorted({c for v, c in compared if v == name})
        if not cuts:
            out.append((0.0,))
            continue
        mids = [(a + b) / 2 for a, b in itertools.pairwise(cuts)]
        out.append(tuple(sorted({cuts[0] - 1.0, *cuts, *mids, cuts[-1] + 1.0})))
    return out[0], out[1]


def _first_match(ctx: FeatureContext, n: int, ordered: list[tuple[int, Condition]]) -> npt.NDArray[np.int8]:
    """Per row, the code of the first ``(code, rule)`` whose rule holds; the last entry is the fallback."""
    out = np.full(n, ordered[-1][0], np.int8)
    undecided = np.ones(n, bool)
    for code, rule in ordered[:-1]:
        hit = rule.evaluate(ctx, n) & undecided
        out[hit] = code
        undecided &= ~hit
    return out


def feature_vocab(params: Mapping[str, float], **kw: Any) -> Vocabulary:
    return Vocabulary(numbers=frozenset(FEATURE_NAMES) | kw.pop("numbers", frozenset()), params=params, **kw)


def resolve(ref: str | Path, directory: Path) -> Path:
    """A shipped name (``lifecycle-5``) or a path to a YAML file."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    shipped = directory / f"{ref}.yaml"
    if not shipped.exists():
        names = ", ".join(sorted(x.stem for x in directory.glob("*.yaml")))
        raise RuleError(f"{ref}: no such file, and not a shipped name ({names})")
    return shipped


def load_taxonomy(ref: str | Path = DEFAULT_TAXONOMY) -> Taxonomy:
    """Load and validate a taxonomy: a shipped name or a YAML path. Errors name file, line and field."""
    path = resolve(ref, TAXONOMY_DIR)
    doc = load_yaml(path)
    return parse_taxonomy(doc)


def parse_params(doc: Located, top: Mapping[str, Any]) -> dict[str, float]:
    params: dict[str, float] = {}
    raw = check_type(doc, top.get("params", {}) or {}, dict, ("params",))
    for k, v in raw.items():
        if not k.isidentifier():
            raise doc.error(("params", k), f"{k!r} is not a valid name (letters, digits, _)")
        if k in INDEX or k in SCORES:
            raise doc.error(("params", k), f"{k!r} is a feature or score name; choose another parameter name")
        params[k] = float(check_type(doc, v, (int, float), ("params", k)))
    return params


def parse_taxonomy(doc: Located) -> Taxonomy:
    top = check_type(doc, doc.data, dict, ())
    only_keys(doc, top, ("name", "version", "description", "params", "stages", "precedence", "tiers", "at_risk"), ())
    name = need(doc, top, "name", str, ())
    version = need(doc, top, "version", int, ())
    if version < 1:
        raise doc.error(("version",), f"version must be >= 1, got {version}")
    params = parse_params(doc, top)

    stages_raw = need(doc, top, "stages", list, ())
    if len(stages_raw) < 2 or len(stages_raw) > 100:
        raise doc.error(("stages",), f"need 2 to 100 stages, got {len(stages_raw)}")
    names: list[str] = []
    labels: list[str] = []
    whens: list[Any] = []
    for i, st in enumerate(stages_raw):
        at = ("stages", i)
        check_type(doc, st, dict, at)
        only_keys(doc, st, ("name", "label", "when"), at)
        nm = need(doc, st, "name", str, at)
        if not nm or nm == "none" or not nm.replace("_", "").replace("-", "").isalnum():
            raise doc.error((*at, "name"), f"stage name {nm!r}: use letters, digits, - and _ (and not 'none')")
        if nm in names:
            raise doc.error((*at, "name"), f"stage {nm!r} is defined twice")
        names.append(nm)
        labels.append(str(st.get("label", nm)))
        if "when" not in st:
            raise doc.error(at, "missing required field 'when'")
        whens.append(st["when"])

    stage_vocab = feature_vocab(params, unavailable={**dict.fromkeys(SCORES, _STAGE_WHY), "stage": _STAGE_WHY})
    rules = tuple(compile_condition(w, stage_vocab, error_at(doc, ("stages", i, "when"))) for i, w in enumerate(whens))

    prec_raw = top.get("precedence", names)
    check_type(doc, prec_raw, list, ("precedence",))
    precedence: list[int] = []
    for i, nm in enumerate(prec_raw):
        if nm not in names:
            raise doc.error(("precedence", i), f"unknown stage {nm!r}; stages: {', '.join(names)}")
        if names.index(nm) in precedence:
            raise doc.error(("precedence", i), f"stage {nm!r} listed twice")
        precedence.append(names.index(nm))
    if sorted(precedence) != list(range(len(names))):
        missing = [n for n in names if names.index(n) not in precedence]
        raise doc.error(("precedence",), f"must list every stage once; missing: {', '.join(missing)}")
    fallback = precedence[-1]
    if not rules[fallback].always:
        raise doc.error(
            ("stages", fallback, "when"),
            f"stage {names[fallback]!r} is checked last, so its rule must be 'otherwise' (every user needs a stage)",
        )
    for code in precedence[:-1]:
        if rules[code].always:
            raise doc.error(
                ("stages", code, "when"),
                f"'otherwise' on {names[code]!r} hides the stages checked after it; only the last may use it",
            )

    score_vocab = feature_vocab(params, numbers=frozenset(SCORES))
    tiers_raw = need(doc, top, "tiers", list, ())
    if not tiers_raw:
        raise doc.error(("tiers",), "need at least one tier")
    tiers: list[str] = []
    tier_rules: list[Condition] = []
    for i, t in enumerate(tiers_raw):
        at = ("tiers", i)
        check_type(doc, t, dict, at)
        only_keys(doc, t, ("name", "when"), at)
        nm = need(doc, t, "name", str, at)
        if nm in tiers:
            raise doc.error((*at, "name"), f"tier {nm!r} is defined twice")
        tiers.append(nm)
        if "when" not in t:
            raise doc.error(at, "missing required field 'when'")
        tier_rules.append(compile_condition(t["when"], score_vocab, error_at(doc, (*at, "when"))))
    if not tier_rules[-1].always:
        raise doc.error(
            ("tiers", len(tiers) - 1, "when"), "the last tier is the fallback: its rule must be 'otherwise'"
        )

    risk_vocab = Vocabulary(
        numbers=frozenset(FEATURE_NAMES) | frozenset(SCORES),
        categories={"stage": Category(tuple(names))},
        params=params,
    )
    at_risk = compile_condition(need(doc, top, "at_risk", (str, bool), ()), risk_vocab, error_at(doc, ("at_risk",)))

    silence: set[tuple[float, bool]] = set()
    timed: set[tuple[str, int]] = set()
    day_ms = 86_400_000
    located: list[tuple[tuple[str | int, ...], Condition]] = [(("stages", c, "when"), r) for c, r in enumerate(rules)]
    located += [(("tiers", i, "when"), r) for i, r in enumerate(tier_rules)] + [(("at_risk",), at_risk)]
    for where, rule in located:
        for var, op, const in rule.thresholds:
            if var not in TIMED_FEATURES:
                continue
            if const <= 0:
                raise doc.error(where, f"{var} threshold must be positive, got {const}")
            strict = op in (">", "<=")  # x > c / x <= c change answer just after c
            # a strict threshold (x > c) changes its answer just after c; features hold days as float32 (a
            # resolution of seconds at a year), so its timer fires one minute after c, where it is surely past c
            timed.add((TIMED_FEATURES[var], int(round(const * day_ms)) + (STRICT_DELAY_MS if strict else 0)))
            if var == "days_since_active" and where[0] == "stages":
                silence.add((const, strict))
    silence_ms = sorted({int(round(c * day_ms)) + (STRICT_DELAY_MS if strict else 0) for c, strict in silence})
    text = doc.path.read_bytes()
    return Taxonomy(
        name=name,
        version=version,
        description=str(top.get("description", "")).strip(),
        stages=tuple(names),
        labels=tuple(labels),
        precedence=tuple(precedence),
        stage_rules=rules,
        tiers=tuple(tiers),
        tier_rules=tuple(tier_rules),
        at_risk_rule=at_risk,
        at_risk_points=score_points(at_risk),
        params=params,
        silence_days=tuple(sorted({c for c, _ in silence})),
        silence_ms=tuple(silence_ms),
        timers=tuple(sorted(timed)),
        source=str(doc.path),
        fingerprint=hashlib.sha256(text).hexdigest()[:16],
    )
