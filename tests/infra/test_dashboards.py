"""Static checks of the Grafana dashboards and provisioning (no Grafana needed; the live test runs the queries)."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import yaml
from prometheus_client import CollectorRegistry

from pipelines.monitoring.metrics import PipelineMetrics
from tests.infra.dashboards import (
    CLICKHOUSE_TYPE,
    DASHBOARD_DIR,
    PROMETHEUS_TYPE,
    PROVISIONING_DIR,
    ROOT,
    alert_rules,
    expand_clickhouse,
    expand_promql,
    iter_panels,
    load_dashboards,
    metric_name,
    panel_queries,
    vector_selectors,
)

EXTERNAL_METRICS = {"up"}  # written by Prometheus itself


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", ROOT / "infra" / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _provisioned_datasources() -> dict[str, str]:
    files = sorted((PROVISIONING_DIR / "datasources").glob("*.yml"))
    assert files, "no datasource provisioning file"
    out = {}
    for f in files:
        doc = yaml.safe_load(f.read_text())
        assert doc["apiVersion"] == 1
        for ds in doc["datasources"]:
            out[ds["uid"]] = ds["type"]
    return out


def _exported_names() -> set[str]:
    """Every sample name a fresh pipeline registry can export (counters as *_total, histograms as *_bucket ...)."""
    registry = CollectorRegistry()
    PipelineMetrics(registry)
    names = set()
    for fam in registry.collect():
        names.add(fam.name)
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "info": ("_info",),
            "summary": ("_sum", "_count", "_created"),
        }.get(fam.type, ())
        names.update(fam.name + s for s in suffixes)
    return names


def test_committed_dashboards_are_what_generate_py_writes() -> None:
    rendered = _generator().render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARD_DIR.glob("*.json")}
    assert committed.keys() == rendered.keys()
    stale = [name for name, text in rendered.items() if committed[name] != text]
    assert not stale, f"{stale} differ from infra/grafana/generate.py: run `python infra/grafana/generate.py`"


def test_dashboards_parse_and_have_unique_uids_titles_and_panel_ids() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"pipeline-health.json", "lifecycle-overview.json", "model-quality.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, dash in dashboards.items():
        assert dash["title"] and dash["schemaVersion"] >= 36, name
        ids = [p["id"] for p in iter_panels(dash)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for p in iter_panels(dash):
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, f"{name} #{p['id']}: bad gridPos {g}"


def test_every_panel_has_a_provisioned_datasource_and_well_formed_targets() -> None:
    provisioned = _provisioned_datasources()
    assert set(provisioned.values()) == {PROMETHEUS_TYPE, CLICKHOUSE_TYPE}
    for name, dash in load_dashboards().items():
        for p in iter_panels(dash):
            where = f"{name} #{p['id']} {p['title']!r}"
            if p["type"] == "row":
                assert not p.get("targets"), where
                continue
            ds = p.get("datasource") or {}
            assert provisioned.get(str(ds.get("uid"))) == ds.get("type"), f"{where}: datasource {ds} is not provisioned"
            targets = p.get("targets") or []
            assert targets, f"{where}: no targets"
            refs = [t["refId"] for t in targets]
            assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
            for t in targets:
                assert t["datasource"] == ds, f"{where}: target datasource differs from the panel's"
                if ds["type"] == PROMETHEUS_TYPE:
                    assert t.get("expr", "").strip(), f"{where}: empty expr"
                else:
                    assert t.get("rawSql", "").strip() and t["editorType"] == "sql", f"{where}: empty SQL"
                    assert (t["format"], t["queryType"]) in {(0, "timeseries"), (1, "table")}, where


def test_dashboard_variables_are_defined_and_expand() -> None:
    for name, dash in load_dashboards().items():
        defined = {v["name"] for v in dash["templating"]["list"]}
        assert defined == {"instance"}, name
    for q in panel_queries():
        used = set(re.findall(r"\$(\w+)", q.query)) - {"__rate_interval", "__interval", "__range"}
        used -= {"__timeFilter", "__timeInterval", "__fromTime", "__toTime"}
        assert used <= {"instance"}, f"{q.label}: undefined variables {used}"
        if q.ds_type == PROMETHEUS_TYPE:
            expand_promql(q.query)
        else:
            expand_clickhouse(q.query, start_s=0, end_s=1, interval_s=60)


def test_clickhouse_panels_read_deduplicated_tables() -> None:
    for q in panel_queries():
        if q.ds_type != CLICKHOUSE_TYPE:
            continue
        for table in re.findall(r"\bFROM\s+(\w+)", q.query):
            known = {"user_scores", "stage_transitions", "rejected_events", "action_exports"}
            assert table in known, f"{q.label}: unknown {table}"
            assert re.search(rf"\bFROM\s+{table}\s+FINAL\b", q.query), f"{q.label}: read {table} with FINAL"


def test_every_metric_in_dashboards_and_alerts_is_exported_by_the_pipeline() -> None:
    exported = _exported_names() | EXTERNAL_METRICS
    used = {metric_name(s) for q in panel_queries() if q.ds_type == PROMETHEUS_TYPE for s in vector_selectors(q.query)}
    used |= {metric_name(s) for r in alert_rules() for s in vector_selectors(r.expr)}
    assert used, "no metrics found in dashboards and rules"
    assert not used - exported, f"dashboards/alerts use metrics the pipeline does not export: {used - exported}"
    # and the provisioned dashboards cover the pipeline's own metrics
    unused = {
        n
        for n in _exported_names()
        if n.startswith("lifecycle_") and not n.endswith("_created") and not n.endswith("_sum")
    } - used
    families = {re.sub(r"_(total|bucket|count|info)$", "", n) for n in used}
    assert not {n for n in unused if re.sub(r"_(total|bucket|count|info)$", "", n) not in families}, unused


def test_dashboard_provider_points_grafana_at_a_directory() -> None:
    files = sorted((PROVISIONING_DIR / "dashboards").glob("*.yml"))
    assert files
    for f in files:
        doc = yaml.safe_load(f.read_text())
        assert doc["apiVersion"] == 1
        for prov in doc["providers"]:
            assert prov["type"] == "file" and prov["options"]["path"], f.name
