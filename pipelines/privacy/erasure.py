"""PIPL in the store: consent (opt-out of automated marketing) and erasure of a user.

* :func:`set_consent` records opt-outs/opt-ins in ``consent`` (latest wins under
  ``FINAL``); every audience query in ``sql/queries`` leaves opted-out users
  out, and :func:`opted_out_users` is what the pipeline loads to stop scoring
  them.
* :func:`forget_user` deletes every row of a user from every table that holds
  user data, synchronously (``ALTER TABLE ... DELETE`` with ``mutations_sync =
  2``: the rows are physically rewritten away, on every replica, before it
  returns), then logs the erasure in ``erasure_log`` and adds the user to
  ``suppressed``, both under a keyed HMAC of the id (:func:`user_hash`, with the
  secret ``LIFECYCLE_ERASURE_SALT``): never the id, and not reversible by hashing
  guessed ids without the key. The pipeline drops a suppressed user's events
  (:class:`pipelines.privacy.consent.ConsentFilter`), so a replay or a new event
  does not bring them back; an opt-in (:func:`set_consent`) lifts it.

What this module cannot do: remove the user from the pipeline's in-memory
state. A running pipeline that still holds the user would write them back on
their next event or silence timer, so the pipeline must drop the user from its
state (and its recovery snapshots: :func:`pipelines.flow.recovery.erase_from_recovery`)
*before* this runs against the store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable

import pyarrow as pa

from pipelines.contract.ids import normalize_user_id
from pipelines.io.store.base import Store

_TS = pa.timestamp("ms", tz="UTC")

#: Tables with user data, and how to find a user's rows in each. A dead letter is the user's by the id
#: the store extracted from its bytes (``rejected_events.user_id``); one whose JSON was too broken for
#: that (``user_id = ''``) is theirs when its bytes hold the id *as the user_id field*
#: (``"user_id":"<id>"``): matching the bare id anywhere would take other users' dead letters
#: (forgetting a user called ``web`` deleted every dead letter with ``"channel":"web"``).
ERASABLE: dict[str, str] = {
    "user_scores": "user_id = {uid:String}",
    "score_history": "user_id = {uid:String}",
    "stage_transitions": "user_id = {uid:String}",
    "consent": "user_id = {uid:String}",
    "action_exports": "user_id = {uid:String}",
    "rejected_events": "user_id = {uid:String} OR (user_id = '' AND multiSearchAny(payload, {needles:Array(String)}))",
}
#: Tables that the cluster schema shards (``<table>_local`` under a Distributed ``<table>``); the
#: others are one full copy per node there, deleted from under their own name.
SHARDED: frozenset[str] = frozenset(
    {"user_scores", "score_history", "stage_transitions", "rejected_events", "action_exports"}
)




#: a ClickHouse cluster name as remote_servers defines it: it is written into ON CLUSTER '...', never a parameter
_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")


class MissingSaltError(ValueError):
    """Erasure needs the HMAC key (``LIFECYCLE_ERASURE_SALT``)."""


def user_hash(user_id: str, salt: bytes) -> str:
    """HMAC-SHA256 (hex) of the NFC user id under ``salt``: what ``erasure_log`` and ``suppressed`` keep.

    An unsalted hash of an id like ``u0000042`` is reversed by hashing every such id; the key
    (a secret setting, the same for every process) is what makes the log not reversible.
    """
    if not salt:
        raise MissingSaltError(
            "LIFECYCLE_ERASURE_SALT is not set: erasure keeps a keyed HMAC of the id, never the id; set it to a long "
            "random secret, the same for the pipeline and for forget"
        )
    return hmac.new(salt, normalize_user_id(user_id).encode(), hashlib.sha256).hexdigest()


def forget_user(
    store: Store,
    user_id: str,
    *,
    reason: str,
    salt: bytes,
    table_suffix: str = "",
    on_cluster: str | None = None,
    now: Callable[[], float] = time.time,
) -> dict[str, int]:
    """Delete ``user_id`` from every table in :data:`ERASABLE`; log it; return rows deleted per table.

    Counts are taken just before each delete. For the cluster schema
    (``sql/cluster``) pass ``table_suffix="_local"`` and ``on_cluster``: rows
    are counted through the Distributed tables and deleted from the local
    tables (:data:`SHARDED`) on every shard and replica.
    """
    uid = normalize_user_id(user_id)
    if not uid.strip():
        # an empty id would match every dead letter whose payload had no user_id
        raise ValueError("forget_user needs a non-empty user id")
    if not reason.strip():
        raise ValueError("forget_user needs a reason (it is kept in erasure_log)")
    key = user_hash(uid, salt)  # before anything is deleted: a missing salt stops here
    # the user_id field as producers may have written it (escaped or not, with or without a space)
    encoded = {json.dumps(uid, ensure_ascii=False), json.dumps(uid)}
    needles = sorted(f'"user_id"{sep}{enc}' for enc in encoded for sep in (":", ": "))
    params = {"uid": uid, "needles": needles}
    if on_cluster is not None and not _CLUSTER_NAME.fullmatch(on_cluster):
        raise ValueError(f"cluster name {on_cluster!r}: letters, digits, _ . - only (it is part of the SQL)")
    cluster = f" ON CLUSTER '{on_cluster}'" if on_cluster else ""
    counts: dict[str, int] = {}
    for table, where in ERASABLE.items():
        n = int(store.query(f"SELECT count() AS n FROM {table} WHERE {where}", params=params).column("n")[0].as_py())
        counts[table] = n
        if n:
            target = f"{table}{table_suffix}" if table in SHARDED else table
            store.command(
                f"ALTER TABLE {target}{cluster} DELETE WHERE {where} SETTINGS mutations_sync = 2", params=params
            )
    at = int(now() * 1000)
    _suppress(store, [key], True, at, reason="erased")
    store.insert(
        "erasure_log",
        pa.table(
            {
                "user_hash": pa.array([key], pa.string()),
                "erased_at": pa.array([at], _TS),
                "reason": pa.array([reason], pa.string()),
                "rows_deleted": pa.array([list(counts.items())], pa.map_(pa.string(), pa.uint64())),
            }
        ),
    )
    return counts


def set_consent(
    store: Store,
    user_ids: Iterable[str],
    opted_out: bool,
    source: str,
    *,
    marketing: bool | None = None,
    salt: bytes = b"",
    table_suffix: str = "",
    on_cluster: str | None = None,
    now: Callable[[], float] = time.time,
) -> int:
    """Record that ``user_ids`` opted out (``True``) or back in (``False``); return the rows written.

    An opt-out also takes the user's current action off their ``user_scores`` row (synchronously),
    so nothing downstream that reads the row acts on them; the pipeline scores them no more. For the
    cluster schema pass ``table_suffix="_local"`` and ``on_cluster``, as for :func:`forget_user`.

    ``marketing``: whether the user accepts marketing actions (playbooks read it
    as ``marketing_consent``); by default the opposite of ``opted_out``. A user
    may be scored (``opted_out=False``) without marketing (``marketing=False``).
    ``source`` says where the decision came from (``cli``, ``crm``,
    ``wecom_unsubscribe``, ...). The newest ``updated_at`` per user wins. An opt-in with
    ``salt`` (the erasure HMAC key) also lifts an erased user's suppression: they come back.
    """
    if marketing is None:
        marketing = not opted_out
    ids = sorted({normalize_user_id(u) for u in user_ids})
    if not ids or any(not u.strip() for u in ids):
        raise ValueError("set_consent needs at least one non-empty user id")
    n = len(ids)
    store.insert(
        "consent",
        pa.table(
            {
                "user_id": pa.array(ids, pa.string()),
                "opted_out": pa.array([opted_out] * n, pa.bool_()),
                "marketing": pa.array([marketing and not opted_out] * n, pa.bool_()),
                "updated_at": pa.array([int(now() * 1000)] * n, _TS),
                "source": pa.array([source] * n, pa.string()),
            }
        ),
    )
    if opted_out:
        if on_cluster is not None and not _CLUSTER_NAME.fullmatch(on_cluster):
            raise ValueError(f"cluster name {on_cluster!r}: letters, digits, _ . - only (it is part of the SQL)")
        cluster = f" ON CLUSTER '{on_cluster}'" if on_cluster else ""
        store.command(
            f"ALTER TABLE user_scores{table_suffix}{cluster} UPDATE action = 'none', action_rule = '', "
            "action_at = NULL WHERE has({ids:Array(String)}, user_id) AND action != 'none' SETTINGS mutations_sync = 2",
            params={"ids": ids},
        )
    if not opted_out and salt:
        _suppress(store, [user_hash(u, salt) for u in ids], False, int(now() * 1000), reason=f"opt-in: {source}")
    return n


def _suppress(store: Store, keys: list[str], on: bool, at_ms: int, *, reason: str) -> None:
    n = len(keys)
    store.insert(
        "suppressed",
        pa.table(
            {
                "user_hmac": pa.array(keys, pa.string()),
                "suppressed": pa.array([on] * n, pa.bool_()),
                "updated_at": pa.array([at_ms] * n, _TS),
                "reason": pa.array([reason] * n, pa.string()),
            }
        ),
    )


def suppressed_hashes(store: Store) -> frozenset[str]:
    """The HMACs (:func:`user_hash`) of every user erased and not opted back in: the pipeline drops them."""
    rows = store.query("SELECT user_hmac FROM suppressed FINAL WHERE suppressed")
    return frozenset(rows.column("user_hmac").to_pylist())


def opted_out_users(store: Store) -> frozenset[str]:
    """Every user whose latest consent record is an opt-out (what the pipeline must not score)."""
    rows = store.query("SELECT user_id FROM consent FINAL WHERE opted_out")
    return frozenset(rows.column("user_id").to_pylist())


def no_marketing_users(store: Store) -> frozenset[str]:
    """Users who are scored but refused marketing (their latest consent record says so)."""
    rows = store.query("SELECT user_id FROM consent FINAL WHERE NOT opted_out AND NOT marketing")
    return frozenset(rows.column("user_id").to_pylist())


def erased_user_hashes(store: Store) -> frozenset[str]:
    """SHA-256 of every erased user id (see :func:`user_hash`).

    For the pipeline: compare with ``user_hash`` of ids it holds or first
    sees, to drop an erased user from its state, and - if policy says so - to
    keep a replay of old events from bringing them back.
    """
    rows = store.query("SELECT DISTINCT user_hash FROM erasure_log")
    return frozenset(rows.column("user_hash").to_pylist())
