"""PIPL erasure in the Bytewax recovery store: the shard snapshots, rewritten through :class:`ShardProcessor`.

A restarted pipeline resumes from these snapshots, so an erasure that left them
alone would bring the user back with the next silence timer. Each snapshot is
what :meth:`pipelines.flow.dataflow.ShardLogic.snapshot` returned:
``{"key": shard key, **ShardProcessor.snapshot()}``. Erasure restores it with
:meth:`ShardProcessor.restore`, erases with :meth:`ShardProcessor.erase` and
writes back the same shape from :meth:`ShardProcessor.snapshot`, so it knows
nothing of the snapshot's contents and follows any change to them.

This module holds the flow's names too (:data:`FLOW_ID`, :data:`STATE_STEP`):
the dataflow is built with them, and the snapshots are found by the step id
Bytewax derives from them (:data:`STATE_SNAPSHOT_STEP_ID`).

Snapshots are pickles written by Bytewax; they are read as Bytewax reads them
(``pickle``), so a snapshot is code: whoever can write the recovery store can run
code as the pipeline. :func:`check_trusted` refuses a store that is not owned by
this user or is writable by others, before anything is read from it (the pipeline
on start, ``lifecycle forget``); :func:`ensure_private` creates it 0700 with
0600 partitions (SQLite creates its journal files with the database's mode).
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import stat
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.contract.ids import hash_strings, normalize_user_id
from pipelines.core.defaults import default_taxonomy
from pipelines.core.shard import ShardConfig, ShardProcessor

#: the dataflow's id (``Dataflow(FLOW_ID)`` in :func:`pipelines.flow.dataflow.build_flow`)
FLOW_ID = "lifecycle"
#: the id of the stateful step that holds the shards (``op.stateful(STATE_STEP, ...)``)
STATE_STEP = "state"
#: the ``snaps.step_id`` of that step's snapshots: Bytewax (0.21) names a step by its dotted path in the
#: flow, and ``op.stateful`` is built on a ``stateful_batch`` substep, which is the one that snapshots
STATE_SNAPSHOT_STEP_ID = f"{FLOW_ID}.{STATE_STEP}.stateful_batch"


class UntrustedStateError(ValueError):
    """The recovery store could have been written by someone else: its snapshots are not read."""


def check_trusted(path: Path) -> None:
    """Raise :class:`UntrustedStateError` unless only this user can have written ``path`` and its files.

    A crafted pickle there would run as this user on resume. Trusted: owned by this user (or root,
    who can do anything anyway: a mounted volume's root), writable by nobody else, except by this
    user's own primary group (a Kubernetes volume with ``fsGroup`` is group-writable for the pod).
    """
    if not path.exists():
        return
    me, my_group = os.geteuid(), os.getegid()
    for p in [path, *sorted(path.iterdir())]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            raise UntrustedStateError(f"recovery store {p}: a symbolic link; the state must be its own files")
        if st.st_uid not in (me, 0):
            raise UntrustedStateError(
                f"recovery store {p}: owned by uid {st.st_uid}, not this user (uid {me}); its snapshots are code "
                f"(pickles): chown it, or start over with --rebuild-state"
            )
        if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != my_group):
            raise UntrustedStateError(
                f"recovery store {p}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); its "
                f"snapshots are code (pickles), so a crafted one would run as this user: chmod go-w {p}"
            )


def ensure_private(path: Path) -> None:
    """Make a recovery store this user's alone: the directory 0700, its files 0600."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    for p in path.iterdir():
        if p.is_file() and not p.is_symlink():
            p.chmod(0o600)


def recovery_parts(path: Path) -> list[Path]:
    """The partition files of a Bytewax recovery store at ``path`` (none: no state there yet)."""
    return sorted(path.glob("part-*.sqlite3"))


def erase_from_recovery(recovery_dir: Path, user_ids: Iterable[str], shard_cfg: ShardConfig) -> int:
    """Remove users from every shard snapshot in a Bytewax recovery store; return the rows erased.

    ``shard_cfg`` must be the configuration the pipeline runs with
    (:func:`pipelines.flow.runner.shard_config`): a snapshot taken under
    another taxonomy or playbook is refused (:class:`ValueError`), since
    restoring it would relabel or remap every user, not only the erased ones.
    Run it while the pipeline is stopped (Bytewax holds the recovery store
    while it runs): every snapshot version of every shard is rewritten. Each
    part commits on its own; erasing again is harmless.
    """
    ids = np.array([normalize_user_id(u) for u in user_ids], dtype=object)
    if any(not u.strip() for u in ids):
        raise ValueError("erase_from_recovery needs non-empty user ids")
    keys = hash_strings(ids)
    check_trusted(recovery_dir)
    parts = recovery_parts(recovery_dir)
    if not parts:
        raise ValueError(f"{recovery_dir}: not a Bytewax recovery store (no part-*.sqlite3)")
    erased = 0
    for part in parts:
        with closing(sqlite3.connect(part)) as db, db:  # one transaction per part
            found = db.execute(
                "SELECT state_key, snap_epoch FROM snaps WHERE step_id = ? AND ser_change IS NOT NULL",
                (STATE_SNAPSHOT_STEP_ID,),
            ).fetchall()
            for state_key, epoch in found:  # one snapshot in memory at a time
                where = (STATE_SNAPSHOT_STEP_ID, state_key, epoch)
                (blob,) = db.execute(
                    "SELECT ser_change FROM snaps WHERE step_id = ? AND state_key = ? AND snap_epoch = ?", where
                ).fetchone()
                snap = pickle.loads(blob)
                check_restorable(snap, shard_cfg, f"{part.name}: shard {state_key}, epoch {epoch}")
                proc = ShardProcessor.restore(shard_cfg, snap)
                n = proc.erase(keys)
                if not n:
                    continue
                erased += n
                # the dict ShardLogic.snapshot() returns (pipelines.flow.dataflow)
                new = {"key": snap["key"], **proc.snapshot()}
                db.execute(
                    "UPDATE snaps SET ser_change = ? WHERE step_id = ? AND state_key = ? AND snap_epoch = ?",
                    (pickle.dumps(new, protocol=pickle.HIGHEST_PROTOCOL), *where),
                )
    return erased


def check_restorable(snap: dict[str, Any], cfg: ShardConfig, where: str) -> None:
    """Raise :class:`ValueError` unless ``ShardProcessor.restore(cfg, snap)`` keeps every user as it is.

    Restore re-labels every user under another taxonomy, rebuilds the silence
    timers for other thresholds, the refresh wheel for other intervals, and maps action
    history onto another playbook.
    """
    hint = "erase with the taxonomy and playbook the pipeline runs with (--taxonomy, --playbook)"
    tax = cfg.taxonomy
    got = snap.get("taxonomy", default_taxonomy().fingerprint)  # as ShardProcessor.restore reads it
    if got != tax.fingerprint:
        raise ValueError(
            f"{where}: taken under another taxonomy (fingerprint {got}, not {tax.name}'s {tax.fingerprint}); {hint}"
        )
    if tuple(tuple(x) for x in snap["timers"].get("specs", ())) != tuple(tax.timers):
        raise ValueError(f"{where}: its rule timers are not {tax.name}'s; {hint}")
    if tuple(snap.get("refresh_ms", ())) != (cfg.refresh_ms, cfg.refresh_churned_ms):
        raise ValueError(f"{where}: taken with another refresh interval; erase with the pipeline's refresh settings")
    led = snap.get("ledger")
    pb = cfg.playbook
    if led is not None and (tuple(led["actions"]), tuple(led["rules"])) != (pb.action_names, pb.rule_ids()):
        raise ValueError(f"{where}: taken under another playbook than {pb.name}; {hint}")
