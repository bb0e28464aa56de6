"""``lifecycle train``: training set at rolling origins -> fit -> calibrate -> artifact with its references.

The training set is built by the streaming feature code (:mod:`pipelines.offline.training`); the fit is
:mod:`models.fit`. The artifact carries two drift references: the batch population (every user as of
``--as-of``, :func:`batch_reference`) and the rows the stream itself scored in the last days
(:mod:`pipelines.offline.drift_reference`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.artifact import load_artifact, save_artifact
from models.fit import FitConfig, FitReport, fit
from models.network import HEADS
from models.reference import build_reference
from pipelines.contract.time import DAY_MS, as_of_ms, ms_to_day
from pipelines.core.defaults import MATURE, STAGES, default_taxonomy
from pipelines.core.features import FEATURE_NAMES, LOG_MASK, schema_hash
from pipelines.monitoring.drift import META_KEY as DRIFT_META_KEY
from pipelines.offline.drift_reference import reference_from_events
from pipelines.offline.history import EventHistory, load_history
from pipelines.offline.training import TrainingSet, build_training_set

log = logging.getLogger(__name__)


def batch_reference(model: Any, x_as_of: Any, as_of: str) -> dict[str, Any]:
    """The artifact's ``reference`` block: every user seen up to ``as_of`` (feature rows ``x_as_of``, the
    ``TrainingSet.x_as_of`` of ``train``) scored by ``model``; bins from :func:`models.reference.build_reference`.
    """

    stages = default_taxonomy().assign_stages(x_as_of)
    return build_reference(
        _predict(model, x_as_of),
        {name: x_as_of[:, i] for i, name in enumerate(FEATURE_NAMES)},
        population=f"every user seen up to {as_of}, features and scores as of then (default stage rules)",
        categories={"stage": {s: float(np.mean(stages == i)) for i, s in enumerate(STAGES)}},
    )


def refresh_reference(model_dir: Path, events: Path, *, write: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    r"""Recompute the ``reference`` block of a trained artifact without retraining; return ``(stored, recomputed)``.

    For when the binning in :mod:`models.reference` changes. ``events`` must be the history the model was
    trained on: the population of ``train`` (every user as of the artifact's ``as_of``) is rebuilt with the
    same code, checked against the artifact's data fingerprint and origins, and scored with the stored
    weights. With ``write``, only the ``reference`` key of ``artifact.json`` is replaced (same JSON layout
    as :func:`models.artifact.save_artifact`; ``model.pt`` and every other key are left as they are). The
    bundled artifact (``make model`` wrote ``build/train.jsonl.gz`` with ``lifecycle simulate --users 30000
    --days 150 --seed 11 --start 2026-06-01``)::

        python -c "from pathlib import Path; from pipelines.offline.train import refresh_reference; \
            refresh_reference(Path('models/artifacts/default'), Path('build/train.jsonl.gz'), write=True)"
    """

    art = load_artifact(model_dir, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)
    meta = art.meta
    origins = [int(t) for t in meta["origins_ms"]]
    step_days = round((origins[1] - origins[0]) / DAY_MS) if len(origins) > 1 else 7
    hist = load_history([events])
    ts = build_training_set(
        hist.events,
        as_of_ms=int(meta["as_of_ms"]),
        horizon_days=int(meta["horizon_days"]),
        origins=len(origins),
        step_days=step_days,
    )
    if ts.fingerprint != meta["data_fingerprint"] or list(ts.origins_ms) != origins:
        raise ValueError(
            f"{events}: not the history {model_dir} was trained on (data fingerprint {ts.fingerprint}, "
            f"artifact {meta['data_fingerprint']}; or other origins)"
        )
    recomputed = batch_reference(art.model, ts.x_as_of, str(meta["as_of"]))
    stored = meta.get("reference", {})
    if write:
        meta["reference"] = recomputed
        (model_dir / "artifact.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return stored, recomputed


def _predict(model: Any, x: Any) -> dict[str, Any]:
    """Calibrated scores of raw feature rows, by head name."""

    with torch.no_grad():
        p = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return {head: p[:, i] for i, head in enumerate(HEADS)}


@dataclass(frozen=True, slots=True)
class Trained:
    """What ``lifecycle train`` made: the artifact's version and directory, the fit's report and the training set."""

    model_version: str
    out: Path
    report: FitReport
    training_set: TrainingSet
    fit_seconds: float


def train_model(
    hist: EventHistory,
    *,
    as_of: str,
    out: Path,
    horizon_days: int = 30,
    origins: int = 10,
    step_days: int = 7,
    epochs: int = 60,
    seed: int = 0,
    recency_half_life: float = 0.0,
    drift_window_days: float = 7.0,
    model_version: str | None = None,
) -> Trained:
    """Build the training set at rolling origins before ``as_of``, fit, calibrate, save the artifact to ``out``."""
    cutoff = as_of_ms(as_of)
    ts = build_training_set(
        hist.events, as_of_ms=cutoff, horizon_days=horizon_days, origins=origins, step_days=step_days
    )
    log.info(
        "training set: %s rows x %d features from %s events up to %s, %d origins %s..%s, positive rates %s",
        f"{ts.x.shape[0]:,}", ts.x.shape[1], f"{ts.n_events:,}", as_of, len(ts.origins_ms),
        ms_to_day(ts.origins_ms[0]), ms_to_day(ts.origins_ms[-1]),
        np.round(ts.y.mean(0).astype(np.float64), 3).tolist(),
    )  # fmt: skip
    t0 = time.perf_counter()
    cfg = FitConfig(epochs=epochs, seed=seed)
    # reasons compare a user with the mean *active* user (stage new/growing/mature at the origin)
    active = default_taxonomy().assign_stages(ts.x) <= MATURE
    weight = None
    if recency_half_life > 0:
        weight = (0.5 ** ((ts.origin.max() - ts.origin) / recency_half_life)).astype(np.float32)
    model, report = fit(ts.x, ts.y, LOG_MASK, cfg, groups=ts.user_key, baseline_mask=active, sample_weight=weight)
    fit_s = time.perf_counter() - t0
    # two references: the batch population (every user as of --as-of, what `score` sees) and, for the
    # streaming drift monitor, the rows the stream itself scored in the last days before --as-of
    drift_ref = reference_from_events(
        hist.events.take(hist.events.ts_ms <= cutoff),
        lambda x: _predict(model, x),
        since_ms=int(cutoff - drift_window_days * DAY_MS),
    )
    reference = batch_reference(model, ts.x_as_of, as_of)
    version = model_version or f"lsm-{as_of}-h{horizon_days}"
    save_artifact(
        model,
        out,
        model_version=version,
        feature_names=FEATURE_NAMES,
        schema_hash=schema_hash(),
        horizon_days=horizon_days,
        data_fingerprint=ts.fingerprint,
        metrics={
            "best_val_loss": report.best_val_loss,
            "epochs": report.epochs_run,
            "pos_rate": list(report.pos_rate),
            "rows": int(ts.x.shape[0]),
            "train_rows": report.n_train,
            "val_rows": report.n_val,
            "validation": report.val_metrics,
            "validation_note": "held-out users (20%) of the training origins; also used for early stopping "
            "and calibration, so optimistic: see `lifecycle evaluate` for the temporal holdout",
            "fit_seconds": round(fit_s, 1),
        },
        extra={
            "as_of": as_of,
            "as_of_ms": cutoff,
            "origins_ms": list(ts.origins_ms),
            "origins": [ms_to_day(t) for t in ts.origins_ms],
            "train_events": ts.n_events,
            "rejected_events": hist.n_rejected,
            "label_means": np.round(ts.y.mean(0).astype(np.float64), 4).tolist(),
            "fit_config": {k: getattr(cfg, k) for k in cfg.__slots__},
            "recency_half_life": recency_half_life,
            "normalisation_centre": "mean of training rows in an active stage (new/growing/mature): the reference "
            "user of the reason codes",
            "reference": reference,
            DRIFT_META_KEY: drift_ref.to_meta(),
        },
    )
    return Trained(version, out, report, ts, fit_s)
