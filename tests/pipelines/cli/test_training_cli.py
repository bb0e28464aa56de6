"""``lifecycle train | score | evaluate`` end to end on a small simulated history."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch

from pipelines.cli.model import main
from pipelines.contract.time import as_of_ms
from pipelines.core.features import FEATURE_NAMES
from pipelines.monitoring.drift import DriftReference
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.offline.train import refresh_reference
from pipelines.scoring.scorer import Scorer

AS_OF = "2026-08-25"  # day 55 of 70: 14 days of labels remain after it
TRAIN = ["--as-of", AS_OF, "--horizon-days", "14", "--origins", "3", "--epochs", "3"]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hist")
    sim = simulate(SimConfig(users=1500, days=70, seed=3, start=dt.date(2026, 7, 1)))
    full = d / "events.jsonl.gz"
    write_jsonl(sim.events, full)
    past = d / "past.jsonl"  # the same history cut at the as-of date
    write_jsonl(sim.events.filter(pl.col("ts") <= as_of_ms(AS_OF)), past)
    model = d / "model"
    assert main(["train", "--events", str(full), *TRAIN, "--out", str(model)]) == 0
    return {"dir": d, "full": full, "past": past, "model": model, "users": sim.events}  # type: ignore[dict-item]


def _meta(model: Path) -> dict:
    return json.loads((model / "artifact.json").read_text())


def test_train_writes_a_complete_versioned_artifact(history: dict) -> None:
    meta = _meta(history["model"])
    assert meta["model_version"] == f"lsm-{AS_OF}-h14" and meta["horizon_days"] == 14
    assert meta["feature_names"] == list(FEATURE_NAMES) and len(meta["schema_hash"]) == 16
    assert meta["as_of"] == AS_OF and meta["as_of_ms"] == as_of_ms(AS_OF)
    assert len(meta["origins"]) == 3 and all(t + 14 * 86_400_000 <= meta["as_of_ms"] for t in meta["origins_ms"])
    assert len(meta["data_fingerprint"]) == 16
    assert set(meta["metrics"]["validation"]) == {"churn_risk", "purchase_propensity"}
    ref = meta["reference"]
    assert set(ref["scores"]) == {"churn_risk", "purchase_propensity"} and set(ref["features"]) == set(FEATURE_NAMES)
    assert sum(ref["categories"]["stage"].values()) == pytest.approx(1.0)
    drift = DriftReference.from_meta(meta)  # what the streaming drift monitor reads
    assert drift is not None and drift.rows > 0
    assert {(c.kind, c.name) for c in drift.columns} >= {("score", "churn_risk"), ("feature", "days_since_active")}
    scorer = Scorer.from_dir(history["model"], device="cpu")  # normalisation and calibration travel in the weights
    assert float(scorer.model.std.min()) > 0 and scorer.model_version == meta["model_version"]


def test_training_is_deterministic_and_blind_to_events_after_as_of(history: dict, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["train", "--events", str(history["past"]), *TRAIN, "--out", str(out)]) == 0
    assert _meta(out)["data_fingerprint"] == _meta(history["model"])["data_fingerprint"]
    a = torch.load(history["model"] / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_score_writes_one_row_per_user_seen_up_to_as_of(history: dict, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    assert main(["score", "--events", str(history["full"]), "--as-of", AS_OF, "--model", str(history["model"]),
                 "--out", str(out)]) == 0  # fmt: skip
    got = pl.read_csv(out)
    seen = history["users"].filter(pl.col("ts") <= as_of_ms(AS_OF))["user_id"].unique().sort()
    assert got["user_id"].to_list() == seen.to_list()
    for col in ("user_id", "stage", "tier", "churn_risk", "purchase_propensity", "reasons", "at_risk", "model_version"):
        assert col in got.columns
    assert got["churn_risk"].is_between(0, 1).all() and (got["model_version"] == f"lsm-{AS_OF}-h14").all()
    # the same scores from the history cut at the as-of date, and from Parquet output
    pq_out = tmp_path / "scores.parquet"
    assert main(["score", "--events", str(history["past"]), "--as-of", AS_OF, "--model", str(history["model"]),
                 "--out", str(pq_out)]) == 0  # fmt: skip
    again = pl.read_parquet(pq_out)
    assert again["churn_risk"].to_list() == pytest.approx(got["churn_risk"].to_list(), rel=1e-6)  # CSV keeps 7 digits
    assert ["; ".join(r) for r in again["reasons"].to_list()] == got["reasons"].fill_null("").to_list()


def test_evaluate_writes_the_report_with_baselines_on_the_same_users(history: dict, tmp_path: Path) -> None:
    out, figs = tmp_path / "report", tmp_path / "figures"
    args = ["evaluate", "--events", str(history["full"]), "--as-of", AS_OF, "--model", str(history["model"])]
    assert main([*args, "--out", str(out), "--figures", str(figs)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    heads = metrics["segments"]["all"]
    assert set(heads) == {"churn_risk", "purchase_propensity"}
    for per in heads.values():
        assert set(per) == {"model", "rfm", "bgnbd"}
        assert len({m["n"] for m in per.values()}) == 1 and len({m["positive_rate"] for m in per.values()}) == 1
        for m in per.values():
            assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_at_10"} <= set(m)
    assert heads["churn_risk"]["model"]["roc_auc"] > 0.8
    html = (out / "report.html").read_text()
    for png in ("roc.png", "calibration.png", "lift.png", "pr.png", "scores.png", "stages.png"):
        assert (out / png).stat().st_size > 5000 and (figs / png).is_file() and png in html


def test_evaluate_refuses_what_would_not_be_a_holdout(history: dict, tmp_path: Path, capsys) -> None:
    args = ["evaluate", "--events", str(history["full"]), "--model", str(history["model"]), "--out", str(tmp_path)]
    assert main([*args, "--as-of", "2026-08-18"]) == 3  # the model saw labels of this period
    assert "overlap" in capsys.readouterr().err
    assert main([*args, "--as-of", "2026-09-01"]) == 3  # the file ends before the horizon does
    assert "whole horizon" in capsys.readouterr().err


def test_a_model_of_another_feature_schema_is_refused_with_a_clear_message(
    history: dict, tmp_path: Path, capsys
) -> None:
    model = tmp_path / "old"
    shutil.copytree(history["model"], model)
    meta = _meta(model)
    meta["schema_hash"] = "0123456789abcdef"
    meta["feature_names"] = meta["feature_names"][:-1] + ["legacy_feature"]
    (model / "artifact.json").write_text(json.dumps(meta))
    args = ["score", "--events", str(history["past"]), "--as-of", AS_OF, "--model", str(model)]
    assert main([*args, "--out", str(tmp_path / "s.csv")]) == 3
    err = capsys.readouterr().err
    assert "0123456789abcdef" in err and "legacy_feature" in err and "Retrain" in err


def test_train_reads_csv_histories_like_jsonl(history: dict, tmp_path: Path) -> None:
    pl.read_ndjson(history["past"]).write_csv(tmp_path / "past.csv")
    out = tmp_path / "from_csv"
    assert main(["train", "--events", str(tmp_path / "past.csv"), *TRAIN, "--out", str(out)]) == 0
    assert _meta(out)["data_fingerprint"] == _meta(history["model"])["data_fingerprint"]


def test_the_reference_block_is_recomputed_from_the_training_history_without_retraining(
    history: dict, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(history["model"], model)
    text, weights = (model / "artifact.json").read_text(), (model / "model.pt").read_bytes()
    stored, again = refresh_reference(model, history["past"])  # same population as `train` saw
    assert again == stored == _meta(model)["reference"]
    stale = _meta(model)
    stale["reference"]["scores"] = {}
    (model / "artifact.json").write_text(json.dumps(stale, indent=2, sort_keys=True) + "\n")
    refresh_reference(model, history["full"], write=True)  # events after as-of are ignored, as in `train`
    assert (model / "artifact.json").read_text() == text  # only the block changed, and back
    assert (model / "model.pt").read_bytes() == weights
    other = tmp_path / "other.jsonl"
    write_jsonl(history["users"].filter(pl.col("ts") <= as_of_ms(AS_OF) - 86_400_000), other)
    with pytest.raises(ValueError, match="not the history"):
        refresh_reference(model, other)
