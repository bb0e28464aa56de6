"""An https store signed by a private CA: trusted through LIFECYCLE_STORE_CA_FILE, refused without it.

Verification is never turned off: without the CA the connection fails with one line, no password in it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.io.store.base import StoreError
from pipelines.io.store.url import open_store
from tests.support.chdb_http import ChdbHttpServer

pytestmark = pytest.mark.integration


def _private_ca(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl, as an operator would)."""

    def sh(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, cwd=d)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
       "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "srv.key",
       "-out", "srv.csr")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    sh("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
       "-days", "2", "-extfile", "ext.cnf", "-out", "srv.pem")  # fmt: skip
    return d / "ca.pem", d / "srv.pem", d / "srv.key"


def test_a_store_behind_a_private_ca_is_trusted_with_the_ca_file_and_refused_without(tmp_path: Path) -> None:
    ca, cert, key = _private_ca(tmp_path)
    server = ChdbHttpServer(tmp_path / "db", users={"lifecycle": "hunter2"}, tls=(cert, key)).start()
    try:
        url = server.url
        assert url.startswith("https://")
        store = open_store(url, user="lifecycle", password="hunter2", ca_file=str(ca))
        try:
            assert store.query("SELECT 1 AS one").to_pylist() == [{"one": 1}]
        finally:
            store.close()
        with pytest.raises(StoreError) as err:
            open_store(url, user="lifecycle", password="hunter2").query("SELECT 1")
        assert "hunter2" not in str(err.value) and "\n" not in str(err.value)
    finally:
        server.stop()
