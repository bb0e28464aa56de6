"""An erased user stays erased: a replay of their events or a new one does not bring them back.

Before, ``forget`` deleted the user's rows (and consent row) and the pipeline never read ``erasure_log``,
so the next event re-scored them and could market to them again; ``erasure_log`` kept an unsalted SHA-256
of the id, reversed by hashing every id of the form ``u0000042``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pipelines.flow.runner import StateError, run_pipeline
from pipelines.io.store.chdb import ChdbStore
from pipelines.privacy.erasure import MissingSaltError, forget_user, set_consent, user_hash
from pipelines.settings import Settings
from tests.support.events import T0, line

pytestmark = pytest.mark.integration

SALT = "a-long-random-secret"
H = 3_600_000


def _events(path: Path, start: int, users: list[str]) -> Path:
    lines = [line(event_id=f"{u}-{start}-{k}", user_id=u, ts=T0 + start + k * H) for u in users for k in range(3)]
    lines.append(line(event_id=f"clock-{start}", user_id="clock", ts=T0 + start + 10 * H))  # closes their ticks
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run(tmp: Path, events: Path, *, rebuild: bool = False, salt: str = SALT) -> float:
    registry = CollectorRegistry()
    s = Settings(input=str(events), store=f"chdb://{tmp}/s.chdb", metrics_port=0, erasure_salt=salt)
    run_pipeline(s, registry=registry, serve_metrics=False, rebuild_state=rebuild)
    return registry.get_sample_value("lifecycle_events_opted_out_total") or 0.0


def _scored(tmp: Path) -> set[str]:
    store = ChdbStore(tmp / "s.chdb")
    try:
        return set(store.query("SELECT user_id FROM user_scores FINAL").column("user_id").to_pylist())
    finally:
        store.close()


def test_an_erased_users_replayed_and_new_events_are_not_scored_until_they_opt_in(tmp_path: Path) -> None:
    first = _events(tmp_path / "a.jsonl", 0, ["u0000042", "u0000043"])
    _run(tmp_path, first)
    assert {"u0000042", "u0000043"} <= _scored(tmp_path)
    store = ChdbStore(tmp_path / "s.chdb")
    try:
        forget_user(store, "u0000042", reason="data subject request", salt=SALT.encode())
        log = store.query("SELECT user_hash FROM erasure_log").column("user_hash").to_pylist()
    finally:
        store.close()
    assert log == [user_hash("u0000042", SALT.encode())]
    assert log[0] != hashlib.sha256(b"u0000042").hexdigest()  # not reversible by hashing guessed ids

    # the same file again (a replay) and new events of the erased user: dropped before state, counted
    dropped = _run(tmp_path, first, rebuild=True)
    dropped += _run(tmp_path, _events(tmp_path / "b.jsonl", 20 * H, ["u0000042", "u0000044"]), rebuild=True)
    assert "u0000042" not in _scored(tmp_path) and {"u0000043", "u0000044"} <= _scored(tmp_path)
    assert dropped == 6

    store = ChdbStore(tmp_path / "s.chdb")
    try:
        set_consent(store, ["u0000042"], False, "user came back", salt=SALT.encode())
    finally:
        store.close()
    _run(tmp_path, _events(tmp_path / "c.jsonl", 40 * H, ["u0000042"]), rebuild=True)
    assert "u0000042" in _scored(tmp_path)  # an opt-in lifts the suppression


def test_without_the_key_forget_deletes_nothing_and_the_pipeline_refuses_to_start(tmp_path: Path) -> None:
    events = _events(tmp_path / "a.jsonl", 0, ["u1", "u2"])
    _run(tmp_path, events)
    store = ChdbStore(tmp_path / "s.chdb")
    try:
        with pytest.raises(MissingSaltError, match="LIFECYCLE_ERASURE_SALT"):
            forget_user(store, "u1", reason="request", salt=b"")
        assert "u1" in _scored(tmp_path)  # nothing was deleted
        forget_user(store, "u1", reason="request", salt=SALT.encode())
    finally:
        store.close()
    with pytest.raises(StateError, match="erased user"):
        _run(tmp_path, events, salt="", rebuild=True)
