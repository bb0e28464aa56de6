"""The ``lifecycle`` command line: the parser, and one module per command group.

Exit codes (docs/operations.md, "Exit codes and errors"; :mod:`pipelines.cli.errors`): 0 ok,
1 unexpected failure, 2 usage, 3 configuration, 4 a dependency unavailable, 5 data,
130 interrupted by SIGINT, 143 by SIGTERM. Expected failures print one line; the traceback
only with ``-v/--debug``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from importlib import metadata

from pipelines.cli import check, db, errors, logs, model, query, rescore, run, simulate
from pipelines.core.features import schema_hash
from pipelines.settings import DEFAULT_MODEL


def version_line() -> str:
    """``lifecycle-scoring X.Y.Z; model V (feature schema H); pipeline feature schema H``."""
    try:
        pkg = metadata.version("lifecycle-scoring")
    except metadata.PackageNotFoundError:
        pkg = "unknown"
    try:
        meta = json.loads((DEFAULT_MODEL / "artifact.json").read_text())
        bundled = f"bundled model {meta.get('model_version', '?')} (feature schema {meta.get('schema_hash', '?')})"
    except (OSError, ValueError):
        bundled = "no bundled model"
    return f"lifecycle-scoring {pkg}; {bundled}; pipeline feature schema {schema_hash()}"


def _no_default(action: argparse.Action) -> bool:
    """No default worth stating: none, a flag's False, or suppressed (0 is a default: ``is``, not ``in``)."""
    return action.default is None or action.default is False or action.default == argparse.SUPPRESS


class _Help(argparse.HelpFormatter):
    """Help that states every flag's default (unless its text already does, or there is none to state)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or _no_default(action) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors that name the command and list its subcommands."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "required: " in message and self._subparsers is not None:
            choices = [a for a in self._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)]
            if choices:
                names = ", ".join(choices[0].choices)
                message = f"a subcommand is required: {names} (see {self.prog} --help)"
        self.exit(errors.EXIT_USAGE, f"{self.prog}: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="lifecycle",
        description="Real-time user-lifecycle scoring.",
        formatter_class=_Help,
    )
    p.add_argument("--version", action="version", version=version_line())
    p.add_argument(
        "-v", "--debug", "--verbose", dest="verbose", action="store_true", help="debug logging and tracebacks"
    )
    p.add_argument("--log-format", choices=("human", "json"), default="human", help="log lines on stderr")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for group in (run, check, simulate, model, db, rescore, query):
        group.register(sub)
    for name, sp in sub.choices.items():
        sp.prog = f"lifecycle {name}"
        _with_defaults(sp)
    return p


def _with_defaults(p: argparse.ArgumentParser) -> None:
    """Help that states the defaults in ``p`` and its subcommands, also of flags that have no help text."""
    p.formatter_class = _Help
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _with_defaults(child)
        elif action.option_strings and action.help is None and not _no_default(action):
            action.help = "(default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(debug=args.verbose, fmt=args.log_format)
    if not args.verbose:
        # a step that fails inside Bytewax panics its Rust worker: without this, the panic prints a
        # 100-line Rust backtrace above the one line that says what failed (-v keeps it)
        os.environ["RUST_BACKTRACE"] = "0"
    try:
        return int(args.func(args))
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - the error policy: every failure ends as one line and a code
        failure = errors.Interrupted(
            "interrupted: stopped at once (a rerun resumes from the last committed epoch)", errors.EXIT_SIGINT
        ) if isinstance(err, KeyboardInterrupt) else errors.classify(err)  # fmt: skip
        if args.verbose:
            traceback.print_exception(err, file=sys.stderr)
        logs.STDERR.file.flush()
        print(f"lifecycle {args.cmd}: {failure}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":
    sys.exit(main())
