"""docs/operations.md: one table of measured figures, arithmetic and defaults that follow from it, live links.

The capacity figures come from ``make bench``. When the table is updated from a new run, these tests name
every derived number in the text and every Kubernetes default that no longer follows from it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support.prometheus import require_prometheus

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
K8S = ROOT / "infra" / "k8s"
USERS_PER_PROCESS_M = 5  # what the Kubernetes defaults are sized for (statefulset.yaml, operations.md)
SNAPSHOT_SHARE = 0.11  # "keep it at or below ~10 %"
HEADROOM_BYTES = 1.5 * 2**30  # "keep >= 1.5 GiB of headroom"


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _figures() -> dict[str, str]:
    """``{"F1": "<value cell>", ...}`` from the one table of measured figures."""
    rows = re.findall(r"^\| (F\d+) \| `(\w+)` \| ([^|]+) \|", _text(), flags=re.MULTILINE)
    ids = [r[0] for r in rows]
    assert ids == [f"F{i}" for i in range(1, len(ids) + 1)], f"figure ids must be F1..Fn in order: {ids}"
    return {r[0]: r[2].strip() for r in rows}


def _num(cell: str, unit: str) -> float:
    """The number before ``unit`` in a value cell, with k/M multipliers (``0.51M events/s``, ``~430 B``)."""
    m = re.search(r"([0-9.]+)\s*([kM]?)\s*" + re.escape(unit), cell)
    assert m, f"no number before {unit!r} in {cell!r}"
    return float(m[1]) * {"": 1, "k": 1e3, "M": 1e6}[m[2]]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+\s+(.+?)\s*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {_slug(h) for h in headings}


def test_figures_are_in_one_table_and_every_reference_names_one_of_them() -> None:
    figures = _figures()
    assert len(figures) >= 14
    assert _text().count("## Measured figures\n") == 1
    used = set(re.findall(r"\[(F\d+)\]", _text()))
    assert used, "the text refers to no figure"
    assert used <= set(figures), f"references to undefined figures: {used - set(figures)}"


def test_derived_numbers_in_the_text_follow_from_the_table() -> None:
    f = _figures()
    decode, state = 1e6 / _num(f["F2"], "events/s"), 1e6 / _num(f["F3"], "events/s")
    score, insert = 1e6 / _num(f["F4"], "rows/s"), 1e6 / _num(f["F14"], "rows/s")
    per_event_us = decode + state + score + insert
    state_b = _num(f["F6"], "B")
    snap_s, snap_mb = _num(f["F7"], "s"), _num(f["F7"], "MB")
    per_m_users_gb = (state_b + 2 * snap_mb) / 1000
    share = round(score / per_event_us, 2)
    expected = {
        "per-event decode": f"1/[F2] ≈ {decode:.1f} µs",
        "per-event state": f"1/[F3] ≈ {state:.1f} µs",
        "per-row model": f"1/[F4] ≈ {score:.1f} µs",
        "per-row insert": f"1/[F14] ≈ {insert:.1f} µs",
        "per-event total": f"adds up to ≈ {per_event_us:.1f} µs",
        "memory per 1M users": f"≈ **{per_m_users_gb:.2f} GB per 1M users**",
        "memory at 5M users": f"5 × {per_m_users_gb:.2f} ≈ {USERS_PER_PROCESS_M * per_m_users_gb:.1f} GB",
        "scoring share": f"≈ {score:.1f} ÷ {per_event_us:.1f} ≈ {share * 100:.0f} %",
        "GPU ceiling": f"1 ÷ (1 − {share:.2f}) ≈ {1 / (1 - share):.1f} ×",
        "snapshot at 5M users": f"({USERS_PER_PROCESS_M * snap_s:.1f} s per snapshot",
        "users at a 60 s epoch": f"60 s, ~{60 * 0.1 / snap_s:.1f}M users",
        "recovery volume at 5M users": f"~{3 * snap_mb * USERS_PER_PROCESS_M / 1000:.1f} GB for 5M users",
    }
    text = _text()
    stale = {name: s for name, s in expected.items() if s not in text}
    assert not stale, f"docs/operations.md: derived numbers to update after a new bench run: {stale}"


def _quantity(q: str) -> float:
    return float(q[:-2]) * {"Gi": 2**30, "Mi": 2**20}[q[-2:]]


def test_kubernetes_defaults_fit_the_measured_figures() -> None:
    f = _figures()
    state_b = _num(f["F6"], "B")
    snap_s, snap_mb = _num(f["F7"], "s"), _num(f["F7"], "MB")
    sts = yaml.safe_load((K8S / "base" / "statefulset.yaml").read_text())
    config = yaml.safe_load((K8S / "base" / "configmap.yaml").read_text())["data"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    # bytes per user: state, plus the array copy and the pickled bytes of a snapshot (MB per 1M = B per user)
    peak = USERS_PER_PROCESS_M * 1e6 * (state_b + 2 * snap_mb)
    assert _quantity(c["resources"]["limits"]["memory"]) >= peak + HEADROOM_BYTES
    volume = _quantity(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"])
    assert volume >= 3 * snap_mb * 1e6 * USERS_PER_PROCESS_M
    share = USERS_PER_PROCESS_M * snap_s / float(config["LIFECYCLE_EPOCH_SECONDS"])
    assert share <= SNAPSHOT_SHARE, f"snapshots would take {share:.0%} of the time at the default epoch"


def test_links_and_anchors_resolve() -> None:
    own = _anchors(DOC)
    for target in re.findall(r"\]\(([^)\s]+)\)", _text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        dest = (DOC.parent / path).resolve() if path else DOC
        assert dest.exists(), f"broken link {target}"
        if anchor:
            assert dest.suffix == ".md" and anchor in _anchors(dest), f"{target}: no such section"
    # links into this document from the deployment files and their tests
    files = [p for p in (ROOT / "infra").rglob("*") if p.is_file()]
    files += list((ROOT / "tests" / "infra").glob("test_deploy_*.py"))
    for p in files:
        for anchor in re.findall(r"docs/operations\.md#([\w-]+)", p.read_text(errors="replace")):
            assert anchor in own, f"{p.relative_to(ROOT)} links to docs/operations.md#{anchor}: no such section"


def test_the_prometheus_scrape_config_in_the_doc_is_valid(tmp_path: Path) -> None:
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", _text(), flags=re.DOTALL) if "scrape_configs" in b]
    assert len(blocks) == 1
    config = yaml.safe_load(blocks[0])
    assert config["scrape_configs"][0]["job_name"] == "lifecycle"  # what the alert rules select
    promtool = require_prometheus().promtool  # installed by the suite when missing
    # Debian's Prometheus is built without Kubernetes discovery: check everything else (relabel rules
    # included) with a static target in its place.
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
    job["static_configs"] = [{"targets": ["10.0.0.1:9108"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    res = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
