"""docs/metrics.md documents every metric the pipeline exports, with its exposed name, type and labels."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from pipelines.monitoring.metrics import PipelineMetrics
from tests.infra.dashboards import ROOT

_EXPOSED_SUFFIX = {"counter": "_total", "info": "_info"}
_DOC_TYPE = {"counter": "counter", "gauge": "gauge", "histogram": "histogram", "info": "info (gauge = 1)"}


def _catalogue() -> dict[str, tuple[str, set[str]]]:
    """metric -> (type column, label names) from the catalogue table of docs/metrics.md."""
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    rows = {}
    for m in re.finditer(r"^\| `([a-z_:]+)` \|([^|]+)\|([^|]*)\|", text, flags=re.MULTILINE):
        labels = set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", m[3])))  # names, not (values)
        rows[m[1]] = (m[2].strip(), labels)
    return rows


def _labels_of(registry: CollectorRegistry, family: str) -> set[str]:
    collector = registry._names_to_collectors.get(family)  # noqa: SLF001 - declared label names
    return set(getattr(collector, "_labelnames", ()))


def test_every_exported_metric_is_in_the_catalogue_with_its_type_and_labels() -> None:
    registry = CollectorRegistry()
    PipelineMetrics(registry)
    documented = _catalogue()
    for fam in registry.collect():
        exposed = fam.name + _EXPOSED_SUFFIX.get(fam.type, "")
        assert exposed in documented, f"{exposed} is missing from docs/metrics.md"
        doc_type, doc_labels = documented[exposed]
        assert doc_type == _DOC_TYPE[fam.type], f"{exposed}: documented as {doc_type}, is {fam.type}"
        if fam.type == "info":
            continue  # info labels are values set at run time (model version, build versions)
        assert doc_labels == _labels_of(registry, fam.name), f"{exposed}: documented labels {doc_labels}"


def test_catalogue_lists_no_metric_the_pipeline_does_not_export() -> None:
    registry = CollectorRegistry()
    PipelineMetrics(registry)
    exposed = {f.name + _EXPOSED_SUFFIX.get(f.type, "") for f in registry.collect()} | {"up"}
    assert set(_catalogue()) - exposed == set()


def test_no_label_can_carry_a_user_id() -> None:
    registry = CollectorRegistry()
    PipelineMetrics(registry)
    for fam in registry.collect():
        assert not _labels_of(registry, fam.name) & {"user_id", "user", "event_id", "user_key"}, fam.name


def _readme_table() -> dict[str, tuple[str, set[str]]]:
    """metric -> (type, label names) from README's metrics table (the short catalogue operators see first)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {}
    for m in re.finditer(r"^\| `(lifecycle_[a-z_]+)` \| ([a-z]+) \|([^|]*)\|", text, flags=re.MULTILINE):
        rows[m[1]] = (m[2], set(re.findall(r"`([a-z_]+)`", m[3])))
    return rows


def test_readme_metrics_table_is_in_step_with_the_registered_metrics() -> None:
    registry = CollectorRegistry()
    PipelineMetrics(registry)
    table = _readme_table()
    exposed: dict[str, Metric] = {}
    for fam in registry.collect():
        if fam.name.startswith("lifecycle_"):  # the process_* collector's metrics are Prometheus's own
            exposed[fam.name + _EXPOSED_SUFFIX.get(fam.type, "")] = fam
    assert set(exposed) - set(table) == set(), "missing from README's metrics table"
    assert set(table) - set(exposed) == set(), "in README's metrics table but not exported"
    for name, (kind, labels) in table.items():
        fam = exposed[name]
        assert kind == fam.type, f"{name}: README says {kind}, is {fam.type}"
        if fam.type != "info":
            assert labels == _labels_of(registry, fam.name), f"{name}: README lists labels {labels}"
