"""promtool on the committed Prometheus config and rules: syntax, and the rule unit tests.

Runs the Debian ``promtool`` (installed by tests/support/prometheus.py when missing and possible).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.infra.dashboards import PROMETHEUS_DIR, ROOT, RULE_FILES, RULE_TESTS, alert_rules
from tests.support.prometheus import require_prometheus


def _promtool(*args: str | Path) -> str:
    tool = require_prometheus().promtool
    res = subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{out}"
    return out


def test_prometheus_config_is_valid_and_loads_every_rule_file() -> None:
    out = _promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert f"{len(RULE_FILES)} rule files found" in out


def test_alert_rules_pass_promtool_check() -> None:
    assert RULE_FILES, "no rule files under infra/prometheus/rules"
    out = _promtool("check", "rules", *RULE_FILES)
    assert f"{len(alert_rules())} rules found" in out


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    assert RULE_TESTS, "no promtool tests under infra/prometheus/tests"
    out = _promtool("test", "rules", *RULE_TESTS)
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_has_a_severity_and_a_runbook_section() -> None:
    tested = "\n".join(p.read_text() for p in RULE_TESTS)
    for rule in alert_rules():
        assert f"alertname: {rule.name}\n" in tested, f"{rule.name} has no promtool unit test"
        assert rule.labels.get("severity") in {"critical", "warning", "info"}, rule.name
        assert {"summary", "description", "runbook"} <= set(rule.annotations), rule.name
        path, _, anchor = rule.annotations["runbook"].partition("#")
        headings = re.findall(r"^#+\s+(.+?)\s*$", (ROOT / path).read_text(), flags=re.MULTILINE)
        anchors = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}
        assert anchor in anchors, f"{rule.name}: runbook {rule.annotations['runbook']} names no section of {path}"
