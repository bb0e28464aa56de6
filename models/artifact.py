"""Model artifacts: a versioned directory with weights and everything needed to trust them.

Layout (``FORMAT_VERSION`` 1)::

    artifact.json   format version, model version, feature names + schema hash,
                    horizon, heads, hidden sizes, metrics, data fingerprint
    model.pt        the LifecycleNet state_dict (normalisation and calibration included)

Loading checks the feature schema against what the caller will feed, and fails
with a message naming the difference rather than scoring garbage.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.network import HEADS, LifecycleNet

FORMAT_VERSION = 1


class ArtifactError(Exception):
    """An artifact is missing, corrupt or of an unknown format."""


class SchemaMismatchError(ArtifactError):
    """The artifact was trained on a different feature layout than the caller provides."""


@dataclass(frozen=True, slots=True)
class Artifact:
    model: LifecycleNet
    meta: dict[str, Any]

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])


def save_artifact(
    model: LifecycleNet,
    out_dir: Path,
    *,
    model_version: str,
    feature_names: tuple[str, ...],
    schema_hash: str,
    horizon_days: int,
    metrics: dict[str, Any] | None = None,
    data_fingerprint: str = "",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the artifact directory (created if needed) and return it."""
    if len(feature_names) != model.n_features:
        raise ValueError(f"{len(feature_names)} feature names for a model of {model.n_features} inputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "model.pt")
    meta = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "heads": list(HEADS),
        "hidden": list(model.hidden),
        "feature_names": list(feature_names),
        "schema_hash": schema_hash,
        "horizon_days": horizon_days,
        "metrics": metrics or {},
        "data_fingerprint": data_fingerprint,
        **(extra or {}),
    }
    (out_dir / "artifact.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_artifact(
    path: Path, *, expected_schema_hash: str, expected_names: tuple[str, ...] = (), device: str | torch.device = "cpu"
) -> Artifact:
    """Load and verify an artifact; the model is in eval mode on ``device``."""
    meta_path = path / "artifact.json"
    if not meta_path.is_file():
        raise ArtifactError(f"{path}: not a model artifact (no artifact.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{meta_path}: corrupt JSON ({err})") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    if meta.get("schema_hash") != expected_schema_hash:
        names = tuple(meta.get("feature_names", ()))
        missing = [n for n in expected_names if n not in names]
        unknown = [n for n in names if n not in expected_names]
        raise SchemaMismatchError(
            f"{path}: model was trained on feature schema {meta.get('schema_hash')} but the pipeline provides "
            f"{expected_schema_hash}; features the model lacks: {missing[:10] or 'none'}; features the model "
            f"expects that the pipeline does not provide: {unknown[:10] or 'none'}"
            + ("" if missing or unknown else " (same names, different order or version)")
            + ". Retrain with `lifecycle train` or use a matching artifact."
        )
    try:
        model = LifecycleNet(len(meta["feature_names"]), tuple(meta["hidden"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{meta_path}: incomplete artifact metadata ({type(err).__name__}: {err})") from err
    weights = path / "model.pt"
    if not weights.is_file():
        raise ArtifactError(f"{path}: no model.pt beside artifact.json (an incomplete copy?)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a damaged file
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise ArtifactError(f"{weights}: corrupt or incompatible weights ({first[:160]})") from err
    model.eval()
    return Artifact(model.to(device), meta)
