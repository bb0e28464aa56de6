"""``lifecycle train | score | evaluate``: the model's life offline, from an event history file.

:func:`register` adds the three subcommands to the ``lifecycle`` parser; each
sets ``func`` (a function of the parsed args returning the exit code), as the
other registered command groups do (``pipelines/cli/db.py``). Events files may
be JSONL(.gz), CSV or Parquet in the event contract (``docs/events.md``).
Events after ``--as-of`` are ignored by ``train`` and ``score`` and are the
labels of ``evaluate``. Exit codes: 0 ok, 2 bad input (missing file, unusable
history, incompatible model), 1 other failures.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from models.baselines import BGNBDParams
    from pipelines.core.taxonomy import Taxonomy
    from pipelines.offline.history import EventHistory
    from pipelines.scoring.scorer import Scorer

log = logging.getLogger("lifecycle")
Handler = Callable[[argparse.Namespace], int]

_DEFAULT_ORIGINS = 10


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``score`` and ``evaluate`` to an ``argparse`` subparsers object."""
    tr = sub.add_parser("train", help="train a model artifact from an event history")
    _events_flags(tr)
    tr.add_argument("--horizon-days", type=int, default=30, help="H: churn/purchase within H days (default: 30)")
    tr.add_argument("--out", type=Path, required=True, help="artifact directory (created or overwritten)")
    tr.add_argument(
        "--origins", type=int, default=_DEFAULT_ORIGINS, help=f"weekly training origins (default: {_DEFAULT_ORIGINS})"
    )
    tr.add_argument("--step-days", type=int, default=7, help="days between origins (default: 7)")
    tr.add_argument("--epochs", type=int, default=40, help="maximum epochs; early stopping ends sooner")
    tr.add_argument(
        "--recency-half-life",
        type=float,
        default=0.0,
        help="weight training origins by recency: half weight per this many origins back (default: 0 = equal)",
    )
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--model-version", default=None, help="default: lsm-<as-of>-h<H>")
    tr.add_argument(
        "--drift-window-days",
        type=float,
        default=14.0,
        help="the streaming drift reference bins the rows the stream scored in these last days before --as-of",
    )
    tr.set_defaults(func=cmd_train)

    sc = sub.add_parser("score", help="score every user seen up to --as-of (batch; same reasons as streaming)")
    _events_flags(sc)
    _model_flags(sc)
    sc.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.parquet")
    sc.set_defaults(func=cmd_score)

    ev = sub.add_parser("evaluate", help="temporal holdout: model vs RFM and BG/NBD on the H days after --as-of")
    _events_flags(ev, as_of_help="YYYY-MM-DD: scores as of this day, labels from the following H days")
    _model_flags(ev)
    ev.add_argument("--out", type=Path, required=True, help="report directory (report.html, metrics.json, PNGs)")
    ev.add_argument("--figures", type=Path, default=None, help="also copy the PNG figures and metrics.json here")
    ev.add_argument(
        "--allow-overlap",
        action="store_true",
        help="evaluate even if the model was trained with a later --as-of (then it is NOT a holdout)",
    )
    ev.set_defaults(func=cmd_evaluate)


_AS_OF_HELP = "YYYY-MM-DD: events after this day are ignored"


def _events_flags(p: argparse.ArgumentParser, as_of_help: str = _AS_OF_HELP) -> None:
    p.add_argument("--events", type=Path, required=True, help="events file: .jsonl[.gz], .csv[.gz] or .parquet")
    p.add_argument("--as-of", required=True, help=as_of_help)


def _model_flags(p: argparse.ArgumentParser) -> None:
    from pipelines.scoring.scorer import DEFAULT_MODEL_DIR

    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model artifact directory (default: bundled)")
    p.add_argument("--device", default="cpu", help="torch device: cpu | cuda[:N] | auto (default: cpu)")


def _guard(fn: Handler) -> Handler:
    """Incompatible artifacts are a usage error (exit 2) with the artifact's own message."""

    def run(args: argparse.Namespace) -> int:
        from models.artifact import ArtifactError

        try:
            return fn(args)
        except ArtifactError as err:
            print(f"lifecycle: {err}", file=sys.stderr)
            return 2

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _read(path: Path) -> EventHistory:
    from pipelines.offline.history import load_history

    t0 = time.perf_counter()
    hist = load_history([path])
    msg = f"read {len(hist.events):,} events from {path} in {time.perf_counter() - t0:.1f}s"
    if hist.n_rejected:
        msg += f"; rejected {hist.n_rejected:,} ({dict(hist.rejected)}), e.g. {'; '.join(hist.examples[:3])}"
    if hist.duplicates:
        msg += f"; {hist.duplicates:,} repeated event ids applied once"
    print(msg)
    return hist


# --------------------------------------------------------------------------- train


@_guard
def cmd_train(args: argparse.Namespace) -> int:
    """Build the training set at rolling origins before --as-of, fit, calibrate, save the artifact."""
    from models.artifact import save_artifact
    from models.fit import FitConfig, fit
    from pipelines.contract.time import DAY_MS, as_of_ms, ms_to_day
    from pipelines.core.defaults import MATURE, default_taxonomy
    from pipelines.core.features import FEATURE_NAMES, LOG_MASK, schema_hash
    from pipelines.monitoring.drift import META_KEY as DRIFT_META_KEY
    from pipelines.offline.drift_reference import reference_from_events
    from pipelines.offline.training import build_training_set

    cutoff = as_of_ms(args.as_of)
    hist = _read(args.events)
    ts = build_training_set(
        hist.events, as_of_ms=cutoff, horizon_days=args.horizon_days, origins=args.origins, step_days=args.step_days
    )
    print(
        f"training set: {ts.x.shape[0]:,} rows x {ts.x.shape[1]} features from {ts.n_events:,} events up to "
        f"{args.as_of}, {len(ts.origins_ms)} origins {ms_to_day(ts.origins_ms[0])}..{ms_to_day(ts.origins_ms[-1])}, "
        f"positive rates {np.round(ts.y.mean(0).astype(np.float64), 3).tolist()}"
    )
    t0 = time.perf_counter()
    cfg = FitConfig(epochs=args.epochs, seed=args.seed)
    # reasons compare a user with the mean *active* user (stage new/growing/mature at the origin)
    active = default_taxonomy().assign_stages(ts.x) <= MATURE
    weight = None
    if args.recency_half_life > 0:
        weight = (0.5 ** ((ts.origin.max() - ts.origin) / args.recency_half_life)).astype(np.float32)
    model, report = fit(ts.x, ts.y, LOG_MASK, cfg, groups=ts.user_key, baseline_mask=active, sample_weight=weight)
    fit_s = time.perf_counter() - t0
    # two references: the batch population (every user as of --as-of, what `score` sees) and, for the
    # streaming drift monitor, the rows the stream itself scored in the last days before --as-of
    drift_ref = reference_from_events(
        hist.events.take(hist.events.ts_ms <= cutoff),
        lambda x: _predict(model, x),
        since_ms=int(cutoff - args.drift_window_days * DAY_MS),
    )
    reference = batch_reference(model, ts.x_as_of, args.as_of)
    version = args.model_version or f"lsm-{args.as_of}-h{args.horizon_days}"
    save_artifact(
        model,
        args.out,
        model_version=version,
        feature_names=FEATURE_NAMES,
        schema_hash=schema_hash(),
        horizon_days=args.horizon_days,
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
            "as_of": args.as_of,
            "as_of_ms": cutoff,
            "origins_ms": list(ts.origins_ms),
            "origins": [ms_to_day(t) for t in ts.origins_ms],
            "train_events": ts.n_events,
            "rejected_events": hist.n_rejected,
            "label_means": np.round(ts.y.mean(0).astype(np.float64), 4).tolist(),
            "fit_config": {k: getattr(cfg, k) for k in cfg.__slots__},
            "recency_half_life": args.recency_half_life,
            "normalisation_centre": "mean of training rows in an active stage (new/growing/mature): the reference "
            "user of the reason codes",
            "reference": reference,
            DRIFT_META_KEY: drift_ref.to_meta(),
        },
    )
    val = report.val_metrics
    print(
        f"saved model {version} to {args.out} in {fit_s:.0f}s ({report.epochs_run} epochs); validation ROC-AUC "
        + ", ".join(f"{h} {m['roc_auc']:.3f}" for h, m in val.items())
    )
    return 0


def batch_reference(model: Any, x_as_of: Any, as_of: str) -> dict[str, Any]:
    """The artifact's ``reference`` block: every user seen up to ``as_of`` (feature rows ``x_as_of``, the
    ``TrainingSet.x_as_of`` of ``train``) scored by ``model``; bins from :func:`models.reference.build_reference`.
    """
    from models.reference import build_reference
    from pipelines.core.defaults import STAGES, default_taxonomy
    from pipelines.core.features import FEATURE_NAMES

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

        python -c "from pathlib import Path; from pipelines.cli.model import refresh_reference; \
            refresh_reference(Path('models/artifacts/default'), Path('build/train.jsonl.gz'), write=True)"
    """
    import json

    from models.artifact import load_artifact
    from pipelines.contract.time import DAY_MS
    from pipelines.core.features import FEATURE_NAMES, schema_hash
    from pipelines.offline.training import build_training_set

    art = load_artifact(model_dir, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)
    meta = art.meta
    origins = [int(t) for t in meta["origins_ms"]]
    step_days = round((origins[1] - origins[0]) / DAY_MS) if len(origins) > 1 else 7
    hist = _read(events)
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
    import torch

    from models.network import HEADS

    with torch.no_grad():
        p = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return {head: p[:, i] for i, head in enumerate(HEADS)}


# --------------------------------------------------------------------------- score


@_guard
def cmd_score(args: argparse.Namespace) -> int:
    """Score every user seen up to --as-of with the streaming scorer; write CSV or Parquet."""
    from pipelines.contract.time import as_of_ms
    from pipelines.offline.score import score_as_of, write_scores
    from pipelines.scoring.scorer import Scorer

    if not args.out.name.lower().endswith((".csv", ".parquet", ".pq")):
        raise ValueError(f"{args.out}: --out must end in .csv or .parquet")
    scorer = Scorer.from_dir(args.model, device=args.device)
    hist = _read(args.events)
    table = score_as_of(hist.events, cutoff_ms=as_of_ms(args.as_of), scorer=scorer, taxonomy=_taxonomy())
    write_scores(table, args.out)
    stages = table.column("stage").value_counts().to_pylist()
    mix = ", ".join(f"{d['values']} {d['counts']:,}" for d in sorted(stages, key=lambda d: str(d["values"])))
    at_risk = int(np.asarray(table.column("at_risk")).sum())
    print(f"scored {table.num_rows:,} users as of {args.as_of} with {scorer.model_version}: {mix}; at risk {at_risk:,}")
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------- evaluate


@_guard
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Temporal holdout at --as-of: the model and both baselines on the same users and labels."""
    from pipelines.contract.time import as_of_ms
    from pipelines.scoring.scorer import Scorer

    scorer = Scorer.from_dir(args.model, device=args.device)
    meta = scorer.artifact.meta
    origin = as_of_ms(args.as_of)
    trained_to = meta.get("as_of_ms") or (as_of_ms(meta["as_of"]) if meta.get("as_of") else None)
    if trained_to is None:
        log.warning("the model does not record its training --as-of: cannot check that this is a holdout")
    elif trained_to > origin and not args.allow_overlap:
        raise ValueError(
            f"the model was trained with --as-of {meta.get('as_of')}, after the evaluation --as-of {args.as_of}: "
            "its training labels overlap the evaluation period. Evaluate at or after the training as-of "
            "(or pass --allow-overlap for an in-sample check, which is not a holdout)"
        )
    hist = _read(args.events)
    result = evaluate_holdout(hist, scorer=scorer, origin_ms=origin, as_of=args.as_of, out_dir=args.out)
    if args.figures is not None:
        args.figures.mkdir(parents=True, exist_ok=True)
        for f in [*sorted(args.out.glob("*.png")), args.out / "metrics.json"]:
            shutil.copyfile(f, args.figures / f.name)
    head = result["segments"][result["headline_segment"]]
    for name, per in head.items():
        parts = [f"{s} AUC {m['roc_auc']:.3f} ECE {m['ece']:.3f} lift@10 {m['lift_at_10']:.2f}" for s, m in per.items()]
        print(f"{name}: " + "; ".join(parts))
    print(f"report: {args.out / 'report.html'}")
    return 0


def evaluate_holdout(
    hist: EventHistory, *, scorer: Scorer, origin_ms: int, as_of: str, out_dir: Path
) -> dict[str, Any]:
    """Model, RFM rule and BG/NBD scored on the same users at ``origin_ms``; writes the report, returns metrics.

    Everything any scorer sees is observable at the origin: the model was
    trained on labels up to its own as-of (checked by the caller), the RFM cells
    are fitted on the users' outcomes in ``(origin - H, origin]``, BG/NBD on
    their histories up to the origin. Labels come from ``(origin, origin + H]``.
    """
    from models.baselines import RFMRule, bgnbd_p_none, fit_bgnbd
    from models.network import HEADS
    from models.report import ReportData, write_report
    from pipelines.contract.time import DAY_MS, ms_to_iso
    from pipelines.core.defaults import MATURE, STAGES, default_taxonomy
    from pipelines.core.features import INDEX
    from pipelines.offline.training import build_holdout

    meta = scorer.artifact.meta
    horizon = int(meta["horizon_days"])
    ho = build_holdout(hist.events, origin_ms=origin_ms, horizon_days=horizon)
    if ho.prior_x.shape[0] == 0:
        raise ValueError(f"evaluation needs events from more than {horizon} days before --as-of (the RFM baseline)")
    model_scores = scorer.score(ho.x)
    p_model = np.stack([model_scores.churn_risk, model_scores.purchase_propensity], 1).astype(np.float64)

    # RFM rule: R = days since last activity, F = active days in the last 30, M = lifetime spend
    rfm_cols = ("days_since_active", "active_days_30", "lifetime_value")
    prior = [ho.prior_x[:, INDEX[c]] for c in rfm_cols]
    rfm = RFMRule.fit(prior[0], prior[1], prior[2], ho.prior_y)
    p_rfm = rfm.predict(ho.x[:, INDEX[rfm_cols[0]]], ho.x[:, INDEX[rfm_cols[1]]], ho.x[:, INDEX[rfm_cols[2]]])

    # BG/NBD: active days for churn (P(no active day in H)), orders for propensity (P(>= 1 order in H))
    act, orders = ho.activity, ho.orders
    bg_act = fit_bgnbd(act.x, act.t_x, act.big_t)
    bg_ord = fit_bgnbd(orders.x, orders.t_x, orders.big_t)
    p_bg = np.stack(
        [
            bgnbd_p_none(bg_act, horizon, act.x, act.t_x, act.big_t),
            1.0 - bgnbd_p_none(bg_ord, horizon, orders.x, orders.t_x, orders.big_t),
        ],
        1,
    )
    # evaluation groups users by the default taxonomy's stages (the model's documented population)
    stage = default_taxonomy().assign_stages(ho.x)
    stage_names = np.array(STAGES, dtype=object)[stage]
    n = ho.x.shape[0]
    data = ReportData(
        heads=HEADS,
        labels=ho.y,
        scores={"model": p_model, "rfm": p_rfm, "bgnbd": p_bg},
        scorer_titles={"model": f"model {scorer.model_version}", "rfm": "RFM rule", "bgnbd": "BG/NBD"},
        groups=stage_names,
        group_order=STAGES,
        segments={"all": np.ones(n, bool), "active": stage <= MATURE},
        segment_titles={
            "all": f"every user seen up to {as_of} ({n:,})",
            "active": f"users in an active stage (new/growing/mature) at {as_of} ({int((stage <= MATURE).sum()):,})",
        },
        meta={
            "model": f"{scorer.model_version} (trained with --as-of {meta.get('as_of', '?')}, "
            f"data {meta.get('data_fingerprint', '?')})",
            "features as of": f"end of {as_of} (UTC+8)",
            "labels from": f"{ms_to_iso(origin_ms)} to {ms_to_iso(origin_ms + horizon * DAY_MS)}",
            "horizon (days)": horizon,
            "users": n,
            "events up to as-of / in the label window": f"{ho.events_before:,} / {ho.events_in_window:,}",
            "events rejected by the decoder": hist.n_rejected,
            "churn label": "no activity (any event but unfollow/delete/unsubscribe/leave_group) in the horizon",
            "purchase label": "at least one order in the horizon",
            "RFM rule": f"quintiles of {', '.join(rfm_cols)}; 125 cells, rates fitted on the outcomes of the "
            f"{horizon} days before as-of ({ho.prior_x.shape[0]:,} users)",
            "BG/NBD (active days)": _params(bg_act),
            "BG/NBD (orders)": _params(bg_ord),
        },
        notes=(
            "Temporal holdout: features use only events up to the as-of date, labels only events of the following "
            "horizon, and the model was trained on labels that ended at or before the as-of date.",
        ),
    )
    return write_report(data, out_dir, title=f"Lifecycle model evaluation: {scorer.model_version} at {as_of}")


def _taxonomy() -> Taxonomy:
    """The taxonomy of ``LIFECYCLE_TAXONOMY``, as the streaming flow reads it."""
    from pipelines.settings import Settings

    return Settings(**{}).load_taxonomy()


def _params(p: BGNBDParams) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in p.as_dict().items())


def main(argv: list[str] | None = None) -> int:
    """Run one of these subcommands on its own (``python -m pipelines.cli.model train ...``)."""
    p = argparse.ArgumentParser(prog="lifecycle", description="Train, batch-score and evaluate lifecycle models.")
    register(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as err:
        print(f"lifecycle: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
