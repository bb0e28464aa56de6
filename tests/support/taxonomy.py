"""Taxonomy files for tests: a shipped taxonomy with some parameters changed."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.core.taxonomy import TAXONOMY_DIR


def taxonomy_variant(directory: Path, base: str = "lifecycle-5", **params: float) -> Path:
    """Write ``base`` with ``params`` overridden (same name and playbook) to ``directory``; return the path."""
    doc = yaml.safe_load((TAXONOMY_DIR / f"{base}.yaml").read_text(encoding="utf-8"))
    unknown = set(params) - set(doc["params"])
    if unknown:
        raise KeyError(f"{base} has no params {sorted(unknown)}")
    doc["params"].update(params)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{base}-variant.yaml"
    out.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out
