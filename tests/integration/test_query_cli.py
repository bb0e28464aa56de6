"""``lifecycle query`` against a ClickHouse server (chDB behind the HTTP interface, real clickhouse-connect).

The same client as for chDB: formats written by the engine, parameters bound server-side, FORMAT
clauses passed through, the shipped queries by name, fit for pipes.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chdb_http import ChdbHttpServer

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "pipelines.cli.main"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbHttpServer]:
    with ChdbHttpServer(tmp_path_factory.mktemp("chdb-http")) as srv:
        migrated = subprocess.run([*CLI, "db", "migrate", "--store", srv.url], capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        yield srv


def query(srv: ChdbHttpServer, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "query", "--store", srv.url, *argv], capture_output=True, text=True, timeout=120)


def test_formats_params_and_format_clauses_over_http(server: ChdbHttpServer) -> None:
    sql = "SELECT number AS n, {who:String} AS who FROM numbers({rows:UInt32})"
    out = query(server, "--format", "CSV", "--param", "who=O'Brien, \"ops\"", "--param", "rows=3", sql)
    assert out.returncode == 0, out.stderr
    assert list(csv.reader(io.StringIO(out.stdout))) == [[str(i), "O'Brien, \"ops\""] for i in range(3)]
    each = query(server, "--format", "JSONEachRow", "--param", "who=x", "--param", "rows=2", sql)
    assert [json.loads(line)["n"] for line in each.stdout.splitlines()] == [0, 1]
    passed = query(server, "SELECT 42 AS answer FORMAT JSON")
    assert passed.returncode == 0 and json.loads(passed.stdout)["data"] == [{"answer": 42}]
    piped = query(server, "SELECT 1 AS a, 'b' AS b")  # stdout is a pipe: TSV, no table drawing
    assert piped.stdout == "1\tb\n"


def test_a_shipped_query_runs_by_name(server: ChdbHttpServer) -> None:
    out = query(server, "--file", "at_risk_vips", "--format", "TSVWithNames")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split("\t")[:3] == ["user_id", "stage", "churn_risk"]


def test_a_bad_parameter_or_query_is_one_line(server: ChdbHttpServer, tmp_path: Path) -> None:
    bad = query(server, "--param", "no-equals", "SELECT 1")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("lifecycle query: --param 'no-equals'")
    unknown = query(server, "SELECT * FROM no_such_table")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "UNKNOWN_TABLE" in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
