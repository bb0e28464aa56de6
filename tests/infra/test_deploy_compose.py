"""The Docker Compose deployment (infra/compose) and its image (infra/docker/Dockerfile).

No Docker engine here: the compose file is checked as YAML and for internal consistency (services,
volumes, mounts, ports, topics, credentials, the Grafana provisioning it mounts), its Prometheus config with
``promtool``, the ClickHouse init SQL with ClickHouse's own parser (chDB), and the pipeline's environment
with the real settings object.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pipelines.settings import Settings
from tests.support.prometheus import require_prometheus

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "infra" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and doc["services"]
    return doc


def _interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose variable substitution: ``$$``, ``${VAR}``, ``${VAR:-default}`` (unset: the default)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m["name"]) or (m["default"] or "")

    return re.sub(r"\$\$|\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}", sub, value)


def _service(name: str) -> dict[str, Any]:
    return _compose()["services"][name]


def _env(name: str) -> dict[str, str]:
    return {k: _interpolate(str(v)) for k, v in _service(name).get("environment", {}).items()}


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    dep = svc.get("depends_on", {})
    if isinstance(dep, list):
        return dict.fromkeys(dep, "service_started")
    return {k: v.get("condition", "service_started") for k, v in dep.items()}


def _mounts(svc: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(v.split(":")[:2]) for v in svc.get("volumes", [])]  # type: ignore[misc]


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_services_dependencies_and_volumes_are_consistent() -> None:
    doc = _compose()
    services = doc["services"]
    assert {"clickhouse", "kafka", "pipeline", "prometheus", "grafana"} <= set(services)
    named = set(doc.get("volumes", {}))
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep, condition in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert condition in CONDITIONS, f"{name} -> {dep}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no check"
        for source, _target in _mounts(svc):
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name} mounts undeclared volume {source}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    used = {s for svc in services.values() for s, _ in _mounts(svc)}
    assert named <= used, f"declared but unused volumes: {named - used}"


def test_the_pipeline_image_builds_from_this_repository() -> None:
    pipeline = _service("pipeline")
    context = (COMPOSE_DIR / pipeline["build"]["context"]).resolve()
    assert context == ROOT
    dockerfile = context / pipeline["build"]["dockerfile"]
    assert dockerfile == DOCKERFILE and dockerfile.exists()
    text = DOCKERFILE.read_text()
    for src in re.findall(r"^COPY\s+(\S+)", text, flags=re.MULTILINE):
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text()
    for src in re.findall(r"^COPY\s+(\S+)", text, flags=re.MULTILINE):
        assert f"!{src.rstrip('/')}" in ignore.replace("/\n", "\n"), f"{src} is filtered out of the build context"
    # one image tag everywhere, the package's version
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert version
    tag = f"lifecycle-scoring:{version[1]}"
    assert pipeline["image"] == tag and _service("simulate")["image"] == tag
    sts = yaml.safe_load((ROOT / "infra" / "k8s" / "base" / "statefulset.yaml").read_text())
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == tag
    # the image's user is the one the pods run as; it exposes the metrics and cluster ports
    user = re.search(r"^USER (\d+):(\d+)", text, flags=re.MULTILINE)
    assert user and int(user[1]) == sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    exposed = set(re.search(r"^EXPOSE (.+)$", text, flags=re.MULTILINE)[1].split())  # type: ignore[index]
    assert {str(p["containerPort"]) for p in container["ports"]} == exposed


def test_pipeline_environment_is_valid_settings_for_the_compose_services(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _env("pipeline")
    known = {f"LIFECYCLE_{n.upper()}" for n in Settings.model_fields}
    assert set(env) <= known, f"not settings: {set(env) - known}"
    for k in list(os.environ):
        if k.startswith("LIFECYCLE_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    # the store is the ClickHouse service, with its database, user and password
    store = urlsplit(s.store)
    ch = _env("clickhouse")
    assert (store.hostname, store.port, store.path.strip("/")) == ("clickhouse", 8123, ch["CLICKHOUSE_DB"])
    assert s.store_user == ch["CLICKHOUSE_USER"]
    assert s.store_password.get_secret_value() == ch["CLICKHOUSE_PASSWORD"]
    # Kafka: the broker's internal listener, topics the init job creates
    internal = re.search(r"INTERNAL://([\w.-]+:\d+)", _env("kafka")["KAFKA_ADVERTISED_LISTENERS"])
    assert internal
    topics_job = " ".join(_service("kafka-topics")["command"])
    created = set(re.search(r"for topic in ([^;]+);", topics_job)[1].split())  # type: ignore[index]
    for url in (s.input, s.transitions_topic, s.dead_letter_topic):
        assert url is not None
        parsed = urlsplit(url)
        assert parsed.netloc == internal[1] and parsed.path.strip("/") in created, url
    sim = _service("simulate")["command"]
    assert sim[sim.index("--out") + 1] == s.input
    # metrics reachable from the Prometheus container; recovery on a volume
    assert s.metrics_host == "0.0.0.0"
    assert (s.recovery_dir and str(s.recovery_dir)) in {t for _, t in _mounts(_service("pipeline"))}


def test_prometheus_scrapes_the_pipeline_and_loads_every_rule_file(tmp_path: Path) -> None:
    prom = _service("prometheus")
    mounts = dict((t, s) for s, t in _mounts(prom))
    config_path = COMPOSE_DIR / mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "lifecycle"  # what the alert rules and dashboards select
    port = _env("pipeline")["LIFECYCLE_METRICS_PORT"]
    assert job["static_configs"][0]["targets"] == [f"pipeline:{port}"]
    rules_src = (COMPOSE_DIR / mounts["/etc/prometheus/rules"]).resolve()
    assert rules_src == ROOT / "infra" / "prometheus" / "rules"
    assert config["rule_files"] == ["rules/*.yml"]  # relative to /etc/prometheus
    promtool = require_prometheus().promtool  # installed by the suite when missing
    # the container's layout: /etc/prometheus/{prometheus.yml,rules/}
    shutil.copy(config_path, tmp_path / "prometheus.yml")
    shutil.copytree(rules_src, tmp_path / "rules")
    res = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"{len(list(rules_src.glob('*.yml')))} rule files found" in out


def test_grafana_gets_the_provisioning_and_every_variable_it_expands() -> None:
    graf = _service("grafana")
    mounts = {t: (COMPOSE_DIR / s).resolve() for s, t in _mounts(graf) if s.startswith(".")}
    prov = ROOT / "infra" / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning/datasources"] == prov / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == prov / "dashboards"
    (provider,) = [p for f in (prov / "dashboards").glob("*.yml") for p in yaml.safe_load(f.read_text())["providers"]]
    assert mounts[provider["options"]["path"]] == ROOT / "infra" / "grafana" / "dashboards"
    env = _env("grafana")
    used: set[str] = set()
    for f in (prov / "datasources").glob("*.yml"):  # values only: the comments show ${VAR} as an example
        for value in _strings(yaml.safe_load(f.read_text())):
            used |= set(re.findall(r"\$\{(\w+)\}", value))
    assert used and used <= set(env), f"Grafana lacks {used - set(env)}"
    assert "grafana-clickhouse-datasource" in env["GF_INSTALL_PLUGINS"]
    assert urlsplit(env["LIFECYCLE_PROMETHEUS_URL"]).hostname == "prometheus"
    assert env["LIFECYCLE_CLICKHOUSE_HOST"] == "clickhouse"
    ch = _env("clickhouse")
    assert env["LIFECYCLE_CLICKHOUSE_DATABASE"] == ch["CLICKHOUSE_DB"]
    assert env["LIFECYCLE_CLICKHOUSE_PASSWORD"] == ch["GRAFANA_CLICKHOUSE_PASSWORD"]
    init = (COMPOSE_DIR / "clickhouse-init" / "10-grafana-reader.sh").read_text()
    assert f"CREATE USER IF NOT EXISTS {env['LIFECYCLE_CLICKHOUSE_USER']} " in init


def test_clickhouse_init_sql_parses_in_clickhouse() -> None:
    chdb = pytest.importorskip("chdb")
    script = (COMPOSE_DIR / "clickhouse-init" / "10-grafana-reader.sh").read_text()
    body = re.search(r"<<SQL\n(.*?)\nSQL\n", script, flags=re.DOTALL)
    assert body, "no SQL heredoc in the init script"
    sql = _interpolate(body[1], {"GRAFANA_CLICKHOUSE_PASSWORD": "pw", "CLICKHOUSE_DB": "lifecycle"})
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    assert len(statements) == 2
    for stmt in statements:
        chdb.query(f"EXPLAIN AST {stmt}", "CSV")  # raises on a syntax error
