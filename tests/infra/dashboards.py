"""Reading the committed Grafana dashboards and Prometheus rules the way Grafana and Prometheus do.

Shared by the static checks (tests/infra) and the live test (tests/integration/test_observability.py):
every panel query is extracted from the JSON, Grafana's variables and the ClickHouse plugin's macros are
expanded as Grafana would expand them, and the vector selectors of a PromQL expression are listed so that
each input series of an alert can be checked on its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "infra" / "grafana" / "dashboards"
PROVISIONING_DIR = ROOT / "infra" / "grafana" / "provisioning"
PROMETHEUS_DIR = ROOT / "infra" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))

PROMETHEUS_TYPE = "prometheus"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"
#: Metrics only a Kafka input exports: a simulated/file run has their HELP/TYPE but no series.
KAFKA_ONLY = frozenset({"lifecycle_kafka_consumer_lag"})


@dataclass(frozen=True, slots=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    title: str
    ref_id: str
    ds_type: str
    query: str  # PromQL expr or ClickHouse rawSql, as written in the JSON

    @property
    def label(self) -> str:
        return f"{self.dashboard} #{self.panel_id} {self.title!r} [{self.ref_id}]"


@dataclass(frozen=True, slots=True)
class AlertRule:
    group: str
    name: str
    expr: str
    file: str
    labels: dict[str, str]
    annotations: dict[str, str]


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def iter_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def panel_queries() -> list[PanelQuery]:
    queries = []
    for name, dash in load_dashboards().items():
        for p in iter_panels(dash):
            for t in p.get("targets", []):
                ds = t.get("datasource") or p.get("datasource") or {}
                text = (t.get("expr") if ds.get("type") == PROMETHEUS_TYPE else t.get("rawSql")) or ""
                queries.append(
                    PanelQuery(name, p["id"], p.get("title", ""), t.get("refId", ""), str(ds.get("type")), text)
                )
    return queries


def alert_rules() -> list[AlertRule]:
    rules = []
    for f in RULE_FILES:
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                name = r.get("alert") or r.get("record")
                rules.append(
                    AlertRule(g["name"], name, r["expr"], f.name, r.get("labels", {}), r.get("annotations", {}))
                )
    return rules


# --------------------------------------------------------------------------- Grafana expansion


def expand_promql(expr: str, *, rate_interval: str = "1m", interval: str = "5s", range_: str = "5m") -> str:
    """Grafana's global variables and the dashboards' ``$instance`` (All = ``.+``), as Grafana substitutes them."""
    out = (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", interval)
        .replace("$__range", range_)
        .replace("$instance", ".+")
    )
    if "$" in out:
        raise ValueError(f"unexpanded variable in {expr!r}")
    return out


def expand_clickhouse(sql: str, *, start_s: int, end_s: int, interval_s: int) -> str:
    """The ClickHouse plugin's macros, expanded as its docs specify (``$__timeFilter(c)`` etc.)."""
    col = r"\(\s*([^()]+?)\s*\)"
    out = re.sub(
        r"\$__timeFilter" + col,
        lambda m: f"{m[1]} >= toDateTime({start_s}) AND {m[1]} <= toDateTime({end_s})",
        sql,
    )
    out = re.sub(
        r"\$__timeInterval" + col,
        lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {interval_s} second)",
        out,
    )
    out = out.replace("$__fromTime", f"toDateTime({start_s})").replace("$__toTime", f"toDateTime({end_s})")
    out = out.replace("$__interval_s", str(interval_s))
    if "$" in out:
        raise ValueError(f"unexpanded macro in {sql!r}")
    return out


# --------------------------------------------------------------------------- PromQL selectors

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf"}
)
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")  # [5m], [10m:30s], [$__rate_interval]
_SELECTOR = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")


def vector_selectors(expr: str) -> list[str]:
    """The instant-vector selectors (``name{matchers}``) of a PromQL expression, in order, deduplicated."""
    text = _RANGES.sub(" ", _LABEL_LISTS.sub(" ", expr))
    out: list[str] = []
    for m in _SELECTOR.finditer(text):
        name, matchers = m[1], m[2] or ""
        rest = text[m.end() :].lstrip()
        if name.lower() in _KEYWORDS or (not matchers and rest.startswith("(")):
            continue  # an operator keyword or a function call
        sel = name + matchers
        if sel not in out:
            out.append(sel)
    return out


def metric_name(selector: str) -> str:
    return selector.split("{", 1)[0]
