"""``lifecycle rescore`` against a real chDB store written by the real pipeline.

The store is filled by ``run_pipeline`` from a simulated history file; a second model (the
default one with a shifted churn head, under a new version) rescores it from the same file.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from models.artifact import load_artifact, save_artifact
from pipelines.cli.rescore import parse_as_of, register
from pipelines.core.features import FEATURE_NAMES, compute_features, schema_hash
from pipelines.flow.runner import run_pipeline
from pipelines.io.store.chdb import ChdbStore
from pipelines.offline.history import load_history, state_as_of
from pipelines.offline.rescore import rescore
from pipelines.offline.simulate import SimConfig, simulate
from pipelines.offline.simulate_io import write_jsonl
from pipelines.privacy.erasure import forget_user, set_consent
from pipelines.scoring.scorer import DEFAULT_MODEL_DIR, Scorer
from pipelines.settings import Settings

NEW_VERSION = "lsm-test-rescore-2"
FINAL_SQL = (
    "SELECT user_id, stage, tier, at_risk, churn_risk, purchase_propensity, reasons, model_version, "
    "toInt64(toUnixTimestamp64Milli(last_event_at)) AS last_event_ms, version FROM user_scores FINAL ORDER BY user_id"
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(events file, chDB directory written by the real pipeline from it)."""
    tmp = tmp_path_factory.mktemp("rescore")
    events = tmp / "events.jsonl.gz"
    write_jsonl(simulate(SimConfig(users=400, days=21, seed=3)).events, events)
    store = tmp / "s.chdb"
    s = Settings(input=str(events), store=f"chdb://{store}", metrics_port=0, shards=2)
    run_pipeline(s, registry=CollectorRegistry(), serve_metrics=False)
    return events, store


@pytest.fixture(scope="module")
def new_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model with its churn head shifted: every churn score changes."""
    art = load_artifact(DEFAULT_MODEL_DIR, expected_schema_hash=schema_hash(), expected_names=FEATURE_NAMES)
    with torch.no_grad():
        art.model.head.bias[0] += 0.8
        art.model.head.weight[1] *= 0.5
    out = tmp_path_factory.mktemp("model") / "new"
    return save_artifact(
        art.model,
        out,
        model_version=NEW_VERSION,
        feature_names=FEATURE_NAMES,
        schema_hash=schema_hash(),
        horizon_days=30,
    )


@pytest.fixture()
def store_copy(pipeline_store: tuple[Path, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "s.chdb"
    shutil.copytree(pipeline_store[1], dst, symlinks=True)  # relative links into store/ (Atomic database)
    return dst


def _final(path: Path) -> list[dict]:
    store = ChdbStore(path)
    try:
        return store.query(FINAL_SQL).to_pylist()
    finally:
        store.close()


def test_rescore_writes_every_user_with_the_new_model_and_the_scores_of_the_replayed_features(
    pipeline_store: tuple[Path, Path], store_copy: Path, new_model: Path
) -> None:
    events_path, _ = pipeline_store
    before = {r["user_id"]: r for r in _final(store_copy)}
    assert before and {r["model_version"] for r in before.values()} == {"lsm-default-1"}
    scorer = Scorer.from_dir(new_model, device="cpu", max_batch_rows=97)  # many micro-batches per page
    events = load_history([events_path]).events
    store = ChdbStore(store_copy)
    try:
        res = rescore(store, scorer, events, page_rows=150)  # several pages
        history = store.query(
            "SELECT count() AS n FROM score_history FINAL WHERE model_version = {v:String}", params={"v": NEW_VERSION}
        ).to_pylist()[0]["n"]
    finally:
        store.close()
    after = {r["user_id"]: r for r in _final(store_copy)}

    assert set(after) == set(before)
    assert res.users_in_store == res.rescored == len(before)
    assert res.missing == res.newer_in_store == res.opted_out == 0
    assert history == len(before)  # the score_history view records the rescore too
    assert res.as_of_ms >= max(r["version"] for r in before.values())
    assert {r["model_version"] for r in after.values()} == {NEW_VERSION}
    assert {r["version"] for r in after.values()} == {res.as_of_ms + 1}

    # the scores are those of the replayed features under the new model, user by user
    st = state_as_of(events, res.as_of_ms)
    x = compute_features(st, np.arange(st.n, dtype=np.int64), res.as_of_ms)
    want = Scorer.from_dir(new_model, device="cpu").score(x)
    idx = {u: i for i, u in enumerate(st.user_id[: st.n])}
    for uid, row in after.items():
        i = idx[uid]
        assert row["churn_risk"] == pytest.approx(float(want.churn_risk[i]), abs=1e-6)
        assert row["purchase_propensity"] == pytest.approx(float(want.purchase_propensity[i]), abs=1e-6)
        assert row["reasons"] == want.reasons[i].as_py()
        assert row["last_event_ms"] == before[uid]["last_event_ms"]
    changed = sum(abs(after[u]["churn_risk"] - before[u]["churn_risk"]) > 1e-3 for u in after)
    assert changed > 0.9 * len(after)  # it really is another model


def test_rescore_leaves_opted_out_and_newer_rows_alone_and_never_brings_back_an_erased_user(
    pipeline_store: tuple[Path, Path], store_copy: Path, new_model: Path
) -> None:
    events_path, _ = pipeline_store
    before = {r["user_id"]: r for r in _final(store_copy)}
    users = sorted(before)
    opted, erased = users[0], users[1]
    store = ChdbStore(store_copy)
    try:
        set_consent(store, [opted], True, "test")
        forget_user(store, erased, reason="test", salt=b"k")
        events = load_history([events_path]).events
        scorer = Scorer.from_dir(new_model, device="cpu")
        # an as-of before the store's clock: rows the store wrote later would win anyway; they are left
        early = rescore(store, scorer, events, as_of_ms=min(r["version"] for r in before.values()) - 1)
        # (users whose first event comes after that as-of are not in the history up to it: missing)
        assert early.rescored == 0 and early.opted_out == 1
        assert early.newer_in_store + early.missing == len(before) - 2 and early.newer_in_store > 0
        res = rescore(store, scorer, events)
    finally:
        store.close()
    after = {r["user_id"]: r for r in _final(store_copy)}
    assert erased not in after
    assert after[opted] == before[opted]
    assert res.opted_out == 1 and res.rescored == len(before) - 2 and res.users_in_store == len(before) - 1
    assert {r["model_version"] for u, r in after.items() if u != opted} == {NEW_VERSION}


def test_rescore_as_of_accepts_a_day_an_instant_or_epoch_ms() -> None:
    assert parse_as_of("1790000000000") == 1_790_000_000_000
    assert parse_as_of("2026-09-28") == parse_as_of("2026-09-29T00:00:00+08:00")
    with pytest.raises(ValueError):
        parse_as_of("2026-09-28T00:00:00")


def test_rescore_command_rescores_the_store_and_exits_0(
    pipeline_store: tuple[Path, Path], store_copy: Path, new_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="lifecycle")
    register(parser.add_subparsers(dest="cmd"))
    events_path, _ = pipeline_store
    argv = ["rescore", "--events", str(events_path), "--model", str(new_model), "--store", f"chdb://{store_copy}"]
    threads = torch.get_num_threads()
    try:
        args = parser.parse_args([*argv, "--device", "cpu"])
        assert args.func(args) == 0
        bad = parser.parse_args([*argv[:3], "--model", str(pipeline_store[1]), *argv[5:]])
        assert bad.func(bad) == 3  # not a model artifact: a configuration error
        wrong = parser.parse_args([*argv, "--taxonomy", "lifecycle-9"])
        assert wrong.func(wrong) == 3  # not a taxonomy: refused before anything is read or written
        relabel = parser.parse_args([*argv, "--device", "cpu", "--taxonomy", "aida-5"])
        assert relabel.func(relabel) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert "rescored" in out.out and NEW_VERSION in out.out and "not a model artifact" in out.err
    assert "lifecycle-9: no such file, and not a shipped name" in out.err and "taxonomy aida-5@1" in out.out
    assert {r["model_version"] for r in _final(store_copy)} == {NEW_VERSION}
    s = ChdbStore(store_copy)
    try:
        assert s.query("SELECT DISTINCT taxonomy FROM user_scores FINAL").column("taxonomy").to_pylist() == ["aida-5"]
    finally:
        s.close()


def test_overlapping_event_files_load_each_event_once_in_time_order(tmp_path: Path) -> None:
    events = simulate(SimConfig(users=50, days=3)).events
    write_jsonl(events.head(400), tmp_path / "a.jsonl")
    write_jsonl(events.slice(300), tmp_path / "b.jsonl")  # 100 events in both exports
    ev = load_history([tmp_path / "a.jsonl", tmp_path / "b.jsonl"]).events
    assert len(ev) == events.height
    assert np.unique(ev.event_key).shape[0] == len(ev)
    assert bool(np.all(ev.ts_ms[1:] >= ev.ts_ms[:-1]))


def test_rescore_after_a_taxonomy_change_relabels_everyone_and_keeps_the_streams_actions(
    pipeline_store: tuple[Path, Path], store_copy: Path
) -> None:
    from pipelines.core.taxonomy import load_taxonomy
    from pipelines.offline.score import score_as_of

    events_path, _ = pipeline_store
    actions_sql = (
        "SELECT user_id, playbook, playbook_version, action, action_rule, action_at FROM user_scores FINAL "
        "ORDER BY user_id"
    )
    store = ChdbStore(store_copy)
    try:
        before = store.query(actions_sql).to_pylist()
        assert {r["taxonomy"] for r in store.query("SELECT taxonomy FROM user_scores FINAL").to_pylist()} == {
            "lifecycle-5"
        }
        assert any(r["action"] != "none" for r in before)
        groups = load_taxonomy("groups-4")
        events = load_history([events_path]).events
        res = rescore(store, Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu"), events, taxonomy=groups, page_rows=150)
        after = store.query(
            "SELECT user_id, stage, tier, at_risk, taxonomy, taxonomy_version FROM user_scores FINAL ORDER BY user_id"
        ).to_pylist()
        assert store.query(actions_sql).to_pylist() == before  # actions are the stream's: carried over unchanged
    finally:
        store.close()
    assert res.rescored == len(after) == len(before)
    assert {(r["taxonomy"], r["taxonomy_version"]) for r in after} == {("groups-4", 1)}
    # every user's labels are groups-4's rules over the replayed features (what `lifecycle score` computes)
    want = score_as_of(events, cutoff_ms=res.as_of_ms, scorer=Scorer.from_dir(DEFAULT_MODEL_DIR, device="cpu"),
                       taxonomy=groups).to_pylist()  # fmt: skip
    by_user = {w["user_id"]: (w["stage"], w["tier"], w["at_risk"]) for w in want}
    assert {r["user_id"]: (r["stage"], r["tier"], r["at_risk"]) for r in after} == {
        u: by_user[u] for u in (r["user_id"] for r in after)
    }
    assert {r["stage"] for r in after} <= set(groups.stages) and len({r["stage"] for r in after}) >= 3
