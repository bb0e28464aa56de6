"""What every command shows before it does anything: --version, defaults in --help, logs as JSON, readable text."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli.format import count, duration, instant, number
from pipelines.cli.main import _parser, version_line
from pipelines.core.features import schema_hash
from pipelines.settings import DEFAULT_MODEL

CLI = [sys.executable, "-m", "pipelines.cli.main"]


def test_version_names_the_package_the_bundled_model_and_the_feature_schema() -> None:
    proc = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    meta = json.loads((DEFAULT_MODEL / "artifact.json").read_text())
    out = " ".join(proc.stdout.split())
    assert out == version_line() and out.startswith("lifecycle-scoring ")
    assert meta["model_version"] in out and f"pipeline feature schema {schema_hash()}" in out


def _commands(p: argparse.ArgumentParser, prefix: str = "lifecycle") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(prefix, p)]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, f"{prefix} {name}")
    return out


@pytest.mark.parametrize(("name", "parser"), _commands(_parser()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_help_states_every_default(name: str, parser: argparse.ArgumentParser) -> None:
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if (
            not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            continue
        shown = parser._get_formatter()._get_help_string(action) or ""
        assert action.help and "default" in shown, f"{name} {action.option_strings[0]}: no default in its help"
        assert action.option_strings[-1] in text


def test_log_format_json_writes_one_object_per_line_on_stderr(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "--log-format", "json", "db", "migrate", "--store", f"chdb://{tmp_path / 's.chdb'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any(r["msg"].startswith("applying migration 0001") for r in records)
    assert "applied" in proc.stdout  # the result on stdout, the logs on stderr


def test_numbers_and_times_read_as_an_operator_writes_them() -> None:
    assert count(1, "origin") == "1 origin" and count(1157, "event") == "1,157 events"
    assert duration(0.42) == "0.4 s" and duration(245) == "4 min 05 s" and duration(7380) == "2 h 03 min"
    assert number(0.0020000000949949026) == "0.002" and number(12.3456) == "12.35"
    assert instant(1793375972646) == "2026-10-30 15:59:32 UTC"
