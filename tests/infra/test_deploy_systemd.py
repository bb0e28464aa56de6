"""The single-host systemd unit and its environment file (infra/systemd).

``systemd-analyze verify`` and ``systemd-analyze security --offline`` check the unit when systemd is
installed (skipped with the reason otherwise); the environment example must name every setting of
``pipelines.settings.Settings`` and its active lines must validate.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest

from pipelines.settings import Settings
from tests.support.prometheus import debian_tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "infra" / "systemd" / "lifecycle-scoring.service"
ENV_EXAMPLE = ROOT / "infra" / "systemd" / "lifecycle.env.example"
MAX_EXPOSURE = 2.5  # systemd-analyze security: 0 = fully locked down, 10 = unprotected


def _unit() -> ConfigParser:
    cp = ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp


def _env_lines() -> list[tuple[bool, str, str]]:
    """(active, key, value) of every ``KEY=value`` line, commented out (``# KEY=value``) or not."""
    out = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            value = m[3]
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]  # systemd strips one level of matching quotes
            out.append((m[1] is None, m[2], value))
    return out


def _settings_envs() -> set[str]:
    return {f"LIFECYCLE_{name.upper()}" for name in Settings.model_fields}


def test_env_example_names_every_setting_and_nothing_else() -> None:
    named = {key for _, key, _ in _env_lines()}
    missing = _settings_envs() - named
    assert not missing, f"infra/systemd/lifecycle.env.example lacks {sorted(missing)}"
    unknown = {k for k in named if k.startswith("LIFECYCLE_")} - _settings_envs()
    assert not unknown, f"infra/systemd/lifecycle.env.example names unknown settings {sorted(unknown)}"
    keys = [key for _, key, _ in _env_lines()]
    assert len(keys) == len(set(keys)), "a setting is listed twice"


def test_env_example_active_and_example_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("LIFECYCLE_"):
            monkeypatch.delenv(k)
    active = {key: value for on, key, value in _env_lines() if on}
    assert {"LIFECYCLE_INPUT", "LIFECYCLE_STORE", "LIFECYCLE_RECOVERY_DIR"} <= set(active)
    for k, v in active.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.store == "chdb:///var/lib/lifecycle-scoring/lifecycle.chdb"
    assert str(s.recovery_dir).startswith("/var/lib/lifecycle-scoring/"), "recovery must be in the StateDirectory"
    # every commented example value parses too (one at a time, on top of the active ones)
    for on, key, value in _env_lines():
        if on or key in {"LIFECYCLE_PROCESS_ID", "LIFECYCLE_ADDRESSES", "LIFECYCLE_PROCESSES"}:
            continue
        with monkeypatch.context() as mp:
            mp.setenv(key, value)
            Settings()
    with monkeypatch.context() as mp:  # the cluster pair goes together, with a server store
        mp.setenv("LIFECYCLE_PROCESS_ID", "0")
        mp.setenv("LIFECYCLE_ADDRESSES", "host0:2101,host1:2101")
        mp.setenv("LIFECYCLE_STORE", "http://clickhouse:8123/lifecycle")
        assert Settings().process_id == 0


def test_unit_is_hardened_and_points_at_the_env_file_and_state_directories() -> None:
    svc = _unit()["Service"]
    assert svc["ExecStart"].split()[1:] == ["run"] and svc["ExecStart"].split()[0].endswith("/bin/lifecycle")
    assert svc["EnvironmentFile"] == "/etc/lifecycle-scoring/lifecycle.env"
    assert svc["Restart"] == "on-failure"
    assert svc["ProtectSystem"] == "strict" and svc["NoNewPrivileges"] == "yes"
    assert svc.get("DynamicUser") == "yes" or svc.get("User") not in (None, "root")
    # data and recovery: inside the writable state directory
    state = {f"/var/lib/{d}" for d in svc["StateDirectory"].split()}
    active = {key: value for on, key, value in _env_lines() if on}
    assert active["LIFECYCLE_RECOVERY_DIR"] in state
    store_dir = str(Path(active["LIFECYCLE_STORE"].removeprefix("chdb://")).parent)
    assert store_dir in state
    writable = {p.lstrip("-") for p in svc["ReadWritePaths"].split()}
    assert store_dir in writable


def _systemd_analyze() -> str:
    """systemd-analyze, from Debian's ``systemd`` package (installed by the suite when missing)."""
    return str(debian_tool("systemd-analyze", "systemd"))


def _unit_with_executable(tmp_path: Path) -> Path:
    """The unit with ExecStart at this checkout's venv: verify checks that the binary exists."""
    lifecycle = Path(sys.executable).parent / "lifecycle"
    if not lifecycle.exists():
        pytest.skip(f"{lifecycle} missing: install the package (make venv) to verify the unit")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/lifecycle-scoring/.venv/bin/lifecycle", shlex.quote(str(lifecycle))))
    return copy


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    unit = _unit_with_executable(tmp_path)
    res = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    print(res.stdout + res.stderr)
    # verify exits 0 on unknown keys and unparsable values: any message at all is a failure here
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    unit = _unit_with_executable(tmp_path)
    res = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline unsupported here: {res.stderr.strip()[:200]}")
    print(m[0])
    assert float(m[1]) <= MAX_EXPOSURE, res.stdout
