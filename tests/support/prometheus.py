"""A real Prometheus for the test suite: found on PATH or installed from Debian, run on loopback.

``require_prometheus()`` returns the ``prometheus`` and ``promtool`` binaries. When
they are missing it installs the Debian package (``apt-get install -y
--no-install-recommends prometheus``), but only when running as root on a machine
with ``apt-get``; otherwise it skips the calling test with the reason printed.

The package's own service never runs for us: the install happens under a
``policy-rc.d`` that forbids service starts (Debian's documented hook for exactly
this), and a service that started anyway is stopped again. Our servers listen on a
free loopback port with their own config and storage in a temp directory, so they
neither need nor disturb a system Prometheus on :9090.

``PrometheusServer`` starts one such server scraping the given targets (1 s scrape
and rule evaluation interval), waits until it is ready, answers PromQL through the
HTTP API, and is stopped (terminate, then kill) on exit, at interpreter exit at the
latest: no daemon is left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_INSTALL_LOCK = Path(tempfile.gettempdir()) / "lifecycle-prometheus-install.lock"
_POLICY_RC = Path("/usr/sbin/policy-rc.d")
_APT_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path
    version: str


def _which() -> PrometheusBinaries | None:
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and tool):
        return None
    out = subprocess.run([prom, "--version"], capture_output=True, text=True, timeout=30)
    first = (out.stdout or out.stderr).splitlines()[:1]
    return PrometheusBinaries(Path(prom), Path(tool), first[0] if first else "unknown")


def apt_install(package: str) -> str | None:
    """Install the Debian ``package``; return None on success, else why it was not possible.

    Services the package brings are not started (a ``policy-rc.d`` forbids it for the install).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{package}: not installed and not running as root (cannot apt-get install {package})"
    apt = shutil.which("apt-get")
    if apt is None:
        return f"{package}: not installed and no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", package]
    print(f"installing {package}: " + " ".join(install[1:]), file=sys.stderr, flush=True)
    # Forbid service starts during the install unless the machine already has a policy (Docker images do).
    own_policy = not _POLICY_RC.exists()
    if own_policy:
        _POLICY_RC.write_text("#!/bin/sh\n# written by tests/support/prometheus.py for one install\nexit 101\n")
        _POLICY_RC.chmod(0o755)
    try:
        res = subprocess.run(install, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT_S)
        if res.returncode != 0:  # a fresh machine may have no package lists yet
            upd = subprocess.run(
                [apt, "-o", "DPkg::Lock::Timeout=300", "update"],
                env=env,
                capture_output=True,
                text=True,
                timeout=_APT_TIMEOUT_S,
            )
            res = subprocess.run(install, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT_S)
            if res.returncode != 0:
                tail = (res.stderr or res.stdout or upd.stderr).strip().splitlines()[-3:]
                return f"apt-get install {package} failed: " + " | ".join(tail)
    except subprocess.TimeoutExpired:
        return f"apt-get install {package} did not finish in {_APT_TIMEOUT_S} s"
    finally:
        if own_policy:
            _POLICY_RC.unlink(missing_ok=True)
    return None


def debian_tool(binary: str, package: str) -> Path:
    """``binary`` on PATH, installing Debian ``package`` first if needed; skips (reason printed) if impossible.

    One installer at a time across concurrent test sessions on this machine.
    """
    found = shutil.which(binary)
    if found is None:
        with open(_INSTALL_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                found = shutil.which(binary)
                why = apt_install(package) if found is None else None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        found = found or shutil.which(binary)
        if found is None:
            why = why or f"apt-get installed {package} but {binary} is still not on PATH"
            print(f"SKIP: {why}", file=sys.stderr, flush=True)
            pytest.skip(why)
    return Path(found)


def _stop_packaged_service() -> None:
    """Stop the package's service if the install started it anyway (we never use it)."""
    service = shutil.which("service")
    if service is None:
        return
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        status = subprocess.run([service, "prometheus", "status"], capture_output=True, timeout=30)
        if status.returncode == 0:
            subprocess.run([service, "prometheus", "stop"], capture_output=True, timeout=60)


def find_or_install() -> PrometheusBinaries | str:
    """The binaries, installing them if needed and possible; a reason string otherwise."""
    found = _which()
    if found is not None:
        return found
    # One installer at a time across concurrent test sessions on this machine.
    with open(_INSTALL_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = _which()
            if found is not None:
                return found
            why = apt_install("prometheus")
            if why is None:
                _stop_packaged_service()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if why is not None:
        return why
    return _which() or "apt-get installed prometheus but prometheus/promtool are still not on PATH"


def require_prometheus() -> PrometheusBinaries:
    """The binaries, or skip the calling test with the reason (printed, and shown by ``pytest -ra``)."""
    got = find_or_install()
    if isinstance(got, str):
        print(f"SKIP Prometheus tests: {got}", file=sys.stderr, flush=True)
        pytest.skip(got)
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API answered with an error."""


class PrometheusServer:
    """One Prometheus on 127.0.0.1:<free port> with a temp config and storage.

    ``targets`` are ``host:port`` strings scraped as job ``job`` every
    ``scrape_interval``; ``rule_files`` are loaded and evaluated at the same interval.
    """

    def __init__(
        self,
        binary: Path,
        targets: Sequence[str],
        *,
        job: str = "lifecycle",
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        ready_timeout_s: float = 30.0,
    ) -> None:
        self.binary = binary
        self.targets = list(targets)
        self.job = job
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self, root: Path) -> Path:
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [{"job_name": self.job, "static_configs": [{"targets": self.targets}]}],
        }
        path = root / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="lifecycle-prom-"))
        config = self._write_config(self._dir)
        last = ""
        for _ in range(3):  # the free port may be taken between choosing and binding it
            self.port = free_port()
            log = open(self._dir / "prometheus.log", "wb")  # noqa: SIM115 - owned by the child
            self._proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            log.close()
            atexit.register(self._kill)
            if self._wait_ready():
                return
            last = self.log_tail()
            self._kill()
        self.stop()
        raise PrometheusError(f"Prometheus did not become ready on 127.0.0.1:{self.port}: {last}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        return False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def log_tail(self, lines: int = 20) -> str:
        if self._dir is None or not (self._dir / "prometheus.log").exists():
            return ""
        return "\n".join((self._dir / "prometheus.log").read_text(errors="replace").splitlines()[-lines:])

    # ------------------------------------------------------------------ HTTP API

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; returns ``data``, raises :class:`PrometheusError` on an error answer."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result vector (scalars come back as one unlabelled sample)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for_scrape_attempts(self, timeout_s: float = 30.0) -> None:
        """Until every target was scraped at least once, successfully or not.

        Prometheus hands static targets to its scrape loops only after the discovery
        manager's first update, up to ~5 s after start: a run that starts earlier
        would be over before its first scrape.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            active = self.api("targets")["activeTargets"]
            if len(active) == len(self.targets) and all(not t["lastScrape"].startswith("0001") for t in active):
                return
            time.sleep(0.1)
        raise PrometheusError(f"targets {self.targets} not scraped within {timeout_s} s: {self.log_tail()}")

    def wait_for(self, expr: str, *, timeout_s: float = 30.0, predicate: Any = None) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns samples (accepted by ``predicate`` if given)."""
        deadline = time.monotonic() + timeout_s
        res: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            res = self.query(expr)
            if res and (predicate is None or predicate(res)):
                return res
            time.sleep(0.2)
        raise PrometheusError(f"timed out after {timeout_s} s waiting for {expr!r}; last result {res}")


@contextlib.contextmanager
def prometheus_scraping(targets: Sequence[str], **kwargs: Any) -> Iterator[PrometheusServer]:
    """``require_prometheus()`` + a started :class:`PrometheusServer` (skips if unavailable)."""
    bins = require_prometheus()
    with PrometheusServer(bins.prometheus, targets, **kwargs) as server:
        yield server
