"""``lifecycle train | score | evaluate``: the model's life offline, from an event history file.

:func:`register` adds the three subcommands to the ``lifecycle`` parser; each
sets ``func`` (a function of the parsed args returning the exit code), as the
other registered command groups do (``pipelines/cli/db.py``). Events files may
be JSONL(.gz), CSV or Parquet in the event contract (``docs/events.md``).
Events after ``--as-of`` are ignored by ``train`` and ``score`` and are the
labels of ``evaluate``. Exit codes (:mod:`pipelines.cli.errors`): 0 ok, 3 bad
input (missing file, unusable history, incompatible model), 1 other failures.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.offline.evaluation import evaluate_holdout

if TYPE_CHECKING:
    from pipelines.core.taxonomy import Taxonomy
    from pipelines.offline.history import EventHistory

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
    """Incompatible artifacts are a configuration error (exit 3) with the artifact's own message."""

    def run(args: argparse.Namespace) -> int:
        from models.artifact import ArtifactError
        from pipelines.cli.errors import EXIT_CONFIG

        try:
            return fn(args)
        except ArtifactError as err:
            print(f"lifecycle {args.cmd}: {err}", file=sys.stderr)
            return EXIT_CONFIG

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _read(path: Path) -> EventHistory:
    from pipelines.offline.history import load_history

    t0 = time.perf_counter()
    hist = load_history([path])
    msg = f"read {len(hist.events):,} events from {path} in {time.perf_counter() - t0:.1f} s"
    if hist.n_rejected:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(dict(hist.rejected).items(), key=lambda kv: -kv[1]))
        msg += f"; rejected {hist.n_rejected:,} ({reasons}), e.g. {'; '.join(hist.examples[:3])}"
    if hist.duplicates:
        msg += f"; {hist.duplicates:,} repeated event ids applied once"
    print(msg)
    return hist


# --------------------------------------------------------------------------- train


@_guard
def cmd_train(args: argparse.Namespace) -> int:
    """Build the training set at rolling origins before --as-of, fit, calibrate, save the artifact."""
    from pipelines.cli.format import count, number
    from pipelines.contract.time import ms_to_day
    from pipelines.offline.train import train_model

    hist = _read(args.events)
    t = train_model(
        hist,
        as_of=args.as_of,
        out=args.out,
        horizon_days=args.horizon_days,
        origins=args.origins,
        step_days=args.step_days,
        epochs=args.epochs,
        seed=args.seed,
        recency_half_life=args.recency_half_life,
        drift_window_days=args.drift_window_days,
        model_version=args.model_version,
    )
    ts = t.training_set
    print(
        f"training set: {ts.x.shape[0]:,} rows x {ts.x.shape[1]} features from {ts.n_events:,} events up to "
        f"{args.as_of}, {count(len(ts.origins_ms), 'origin')} {ms_to_day(ts.origins_ms[0])}.."
        f"{ms_to_day(ts.origins_ms[-1])}, positive rates {[number(float(r), 3) for r in ts.y.mean(0)]}"
    )
    val = t.report.val_metrics
    print(
        f"saved model {t.model_version} to {args.out} in {t.fit_seconds:.0f}s ({t.report.epochs_run} epochs); "
        "validation ROC-AUC " + ", ".join(f"{h} {m['roc_auc']:.3f}" for h, m in val.items())
    )
    return 0


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


def _taxonomy() -> Taxonomy:
    """The taxonomy of ``LIFECYCLE_TAXONOMY``, as the streaming flow reads it."""
    from pipelines.settings import Settings

    return Settings(**{}).load_taxonomy()


def main(argv: list[str] | None = None) -> int:
    """Run one of these subcommands on its own (``python -m pipelines.cli.model train ...``)."""
    p = argparse.ArgumentParser(prog="lifecycle", description="Train, batch-score and evaluate lifecycle models.")
    register(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as err:
        from pipelines.cli.errors import classify

        failure = classify(err)
        print(f"lifecycle {args.cmd}: {failure}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":
    sys.exit(main())
