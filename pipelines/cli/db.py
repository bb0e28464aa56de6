"""``lifecycle db migrate``, ``lifecycle forget`` and ``lifecycle consent``: the store's admin commands.

:func:`register` adds the subcommands to the ``lifecycle`` parser; each sets
``func`` to its handler, which returns the exit code of the CLI's error policy
(:mod:`pipelines.cli.errors`: 0 ok, 3 a configuration error, 4 the store is
unavailable, 5 the store refused a statement). The store URL defaults to
``LIFECYCLE_STORE`` (:class:`~pipelines.settings.Settings`), as for ``run``.
User ids are never printed: a forget prints the id's SHA-256, as erasure_log
keeps it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from pipelines.cli.check import store_status
from pipelines.cli.errors import CliError, classify
from pipelines.cli.preflight import open_checked, store_label
from pipelines.flow.recovery import erase_from_recovery, recovery_parts
from pipelines.flow.runner import shard_config
from pipelines.io.store.base import Store, StoreError
from pipelines.io.store.migrations import apply_migrations, discover, migrate
from pipelines.privacy.erasure import forget_user, set_consent, user_hash
from pipelines.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``db migrate``, ``forget`` and ``consent`` to the ``lifecycle`` subcommands."""
    store_help = "store URL: chdb://PATH or http(s)://HOST:PORT/DB [env: LIFECYCLE_STORE]"

    db = sub.add_parser("db", help="store administration (schema migrations: migrate, status)")
    db_sub = db.add_subparsers(dest="db_cmd", required=True)
    mig = db_sub.add_parser("migrate", help="apply the pending numbered migrations and record them")
    mig.add_argument("--store", default=None, help=store_help)
    mig.add_argument(
        "--sql-dir",
        type=Path,
        default=None,
        help="migrations directory, e.g. sql/cluster for the cluster schema [env: LIFECYCLE_SQL_DIR]",
    )
    mig.set_defaults(func=cmd_migrate)
    status = db_sub.add_parser("status", help="list the applied and the pending migrations (changes nothing)")
    status.add_argument("--store", default=None, help=store_help)
    status.add_argument("--sql-dir", type=Path, default=None, help="migrations directory [env: LIFECYCLE_SQL_DIR]")
    status.set_defaults(func=cmd_status)

    forget = sub.add_parser("forget", help="erase a user from every table (PIPL) and record it in erasure_log")
    forget.add_argument("--user", required=True, help="the user id to erase")
    forget.add_argument("--reason", default="data subject request", help="kept in erasure_log")
    forget.add_argument("--store", default=None, help=store_help)
    forget.add_argument(
        "--cluster",
        default=None,
        metavar="NAME",
        help="cluster schema (sql/cluster): delete from the <table>_local tables ON CLUSTER NAME",
    )
    forget.add_argument(
        "--recovery-dir",
        default=None,
        help="also erase the user from this Bytewax recovery store (stop the pipeline first) "
        "[env: LIFECYCLE_RECOVERY_DIR]",
    )
    forget.add_argument(
        "--taxonomy",
        default=None,
        help="with --recovery-dir: the taxonomy the pipeline runs with (default: lifecycle-5) "
        "[env: LIFECYCLE_TAXONOMY]",
    )
    forget.add_argument(
        "--playbook",
        default=None,
        help="with --recovery-dir: the playbook the pipeline runs with (default: the taxonomy's) "
        "[env: LIFECYCLE_PLAYBOOK]",
    )
    forget.set_defaults(func=cmd_forget)

    consent = sub.add_parser("consent", help="record an opt-out (or opt-in) of automated marketing")
    consent.add_argument("--user", required=True, action="append", help="user id (repeat for several)")
    choice = consent.add_mutually_exclusive_group(required=True)
    choice.add_argument("--opt-out", dest="opted_out", action="store_const", const=True, help="the user opts out")
    choice.add_argument("--opt-in", dest="opted_out", action="store_const", const=False, help="the user opts back in")
    choice.add_argument(
        "--no-marketing",
        dest="opted_out",
        action="store_const",
        const="no-marketing",
        help="scored, but no marketing actions (playbooks see marketing_consent = false)",
    )
    consent.add_argument("--source", default="cli", help="where the decision came from (default: cli)")
    consent.add_argument("--store", default=None, help=store_help)
    consent.add_argument(
        "--cluster",
        default=None,
        metavar="NAME",
        help="cluster schema (sql/cluster): an opt-out clears actions in user_scores_local ON CLUSTER NAME",
    )
    consent.set_defaults(func=cmd_consent)


def _open(args: argparse.Namespace) -> tuple[Store, Settings]:
    """The store named by ``--store`` (else the settings), and the settings with the command's flags."""

    flags = ("store", "sql_dir", "recovery_dir", "taxonomy", "playbook")
    overrides = {k: getattr(args, k, None) for k in flags}
    s = Settings(**{k: v for k, v in overrides.items() if v is not None})
    return open_checked(s), s


def _run(args: argparse.Namespace, action: str) -> int:
    try:
        store, settings = _open(args)
        sql_dir = settings.sql_dir
    except (ValidationError, StoreError, CliError) as err:
        failure = classify(err)
        print(f"lifecycle {action}: {failure}", file=sys.stderr)
        return failure.code
    try:
        if action != "db migrate":
            # consent may be recorded before the pipeline first ran, and both commands write columns
            # of the newest schema: bring the store up to date first (idempotent)
            migrate(store, sql_dir)
        if action == "db migrate":
            ran = apply_migrations(store, sql_dir)
            print(f"applied {len(ran)} migration(s){': ' + ', '.join(ran) if ran else ''}")
            print(f"schema at {discover(sql_dir)[-1].name}")
        elif action == "forget":
            salt = settings.erasure_salt.get_secret_value().encode()
            key = user_hash(args.user, salt)  # a missing key stops here, before anything is deleted
            state_rows = None
            state = settings.state_dir()
            explicit = settings.recovery_dir is not None
            if state is not None and (explicit or recovery_parts(state)):
                if not args.reason.strip():  # forget_user refuses it too, but only after the state is erased
                    raise ValueError("forget needs a reason (it is kept in erasure_log)")
                # the pipeline's state first (pipelines.privacy.erasure), restored under the configuration the
                # pipeline runs with: a snapshot taken under another one stops the erasure before the store
                state_rows = erase_from_recovery(state, [args.user], shard_config(settings))
            on_cluster = args.cluster
            counts = forget_user(
                store,
                args.user,
                reason=args.reason,
                salt=salt,
                table_suffix="_local" if on_cluster else "",
                on_cluster=on_cluster,
            )
            out: dict[str, object] = {"user_hash": key, "rows_deleted": counts}
            if state_rows is not None:
                out["state_rows_erased"] = state_rows
            print(json.dumps(out))
        else:
            if args.opted_out == "no-marketing":
                n = set_consent(store, args.user, False, args.source, marketing=False)
                what = "no-marketing"
            else:
                salt = settings.erasure_salt.get_secret_value().encode()
                n = set_consent(
                    store,
                    args.user,
                    bool(args.opted_out),
                    args.source,
                    salt=salt,
                    table_suffix="_local" if args.cluster else "",
                    on_cluster=args.cluster,
                )
                what = "opt-out" if args.opted_out else "opt-in"
            print(f"recorded {what} for {n} user(s)")
    except (ValueError, StoreError) as err:
        failure = classify(err)
        print(f"lifecycle {action}: {failure}", file=sys.stderr)
        return failure.code
    finally:
        store.close()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """``lifecycle db migrate``: apply what is pending, print what ran."""
    return _run(args, "db migrate")


def cmd_status(args: argparse.Namespace) -> int:
    """``lifecycle db status``: every migration of the directory, applied or pending; exit 0 either way."""
    overrides = {k: getattr(args, k, None) for k in ("store", "sql_dir")}
    s = Settings(**{k: v for k, v in overrides.items() if v is not None})
    applied, pending, unknown = store_status(s)
    print(f"store {store_label(s.store)}, migrations in {s.sql_dir}:")
    for name in applied:
        print(f"  applied  {name}")
    for name in pending:
        print(f"  pending  {name}")
    for name in unknown:
        print(f"  unknown  {name} (recorded in the store, not in the directory: applied by a newer version?)")
    print(
        f"{len(applied)} applied, {len(pending)} pending"
        + (" (`lifecycle db migrate` applies them)" if pending else "")
    )
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    """``lifecycle forget --user ID``: erase the user from the store (not from a running pipeline's state)."""
    return _run(args, "forget")


def cmd_consent(args: argparse.Namespace) -> int:
    """``lifecycle consent --user ID --opt-out|--opt-in``."""
    return _run(args, "consent")
