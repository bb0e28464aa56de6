"""The command line's error policy: every expected failure is one line and an exit code per class.

A command raises what its layer raises (a pydantic ``ValidationError``, a
:class:`~pipelines.io.store.base.StoreError`, an ``ArtifactError``, ...); :func:`classify` turns it
into a :class:`CliError`: one line naming what failed, where (file:line, a URL without its
credentials, topic/partition) and what to do, and the exit code of its class (docs/operations.md,
"Exit codes and errors"). Tracebacks are printed only with ``-v/--debug``.

Exit codes: 0 ok, 1 an unexpected failure (a bug: rerun with ``--debug``), 2 usage (argparse, a
query the engine cannot parse), 3 configuration (settings, taxonomy, playbook, model, store path,
input path), 4 a dependency is unavailable (store server, broker, a chDB store in use, a port in
use), 5 data (every input line rejected, a check that found a problem), 130 SIGINT, 143 SIGTERM.
"""

from __future__ import annotations

import errno
import re
from typing import Any

from pydantic import ValidationError

from models.artifact import ArtifactError
from pipelines.core.rules import RuleError
from pipelines.flow.runner import StateError
from pipelines.io.kafka.errors import KafkaSourceError
from pipelines.io.store.base import StoreError
from pipelines.io.store.migrations import MigrationError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_UNAVAILABLE = 4
EXIT_DATA = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class CliError(Exception):
    """An expected failure: ``str(err)`` is the one line shown, :attr:`code` the exit code."""

    code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class UsageError(CliError):
    """The command line itself is wrong (a flag, a query that does not parse)."""

    code = EXIT_USAGE


class ConfigError(CliError):
    """A setting, file or artifact the operator named is invalid or missing."""

    code = EXIT_CONFIG


class UnavailableError(CliError):
    """Something the command needs is not there right now: store server, broker, a store in use, a port."""

    code = EXIT_UNAVAILABLE


class DataError(CliError):
    """The input or the store's content is unusable (every line rejected, a failed check)."""

    code = EXIT_DATA


class Interrupted(CliError):
    """The run was stopped by a signal (after a drain, or at once on a second signal)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"((?:password|passwd|secret|token)=)[^&\s'\"]+", re.IGNORECASE)
_STACK = re.compile(r"[,.]?\s*Stack trace.*", re.DOTALL)
_QUERY_ID = re.compile(r"\?query_id=[0-9a-f-]+")


def redact(text: str) -> str:
    """``text`` without URL credentials (``scheme://user:pass@``) and ``password=`` parameters."""
    return _PASSWORD_PARAM.sub(r"\1***", _URL_CREDENTIALS.sub(r"\1***@", text))


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one redacted line: no engine stack trace, whitespace collapsed, at most ``limit`` characters."""
    text = _QUERY_ID.sub("", _STACK.sub("", redact(text)))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^)\"'\]]+)")
_CH_CODE = re.compile(
    r"Code: (\d+)\. (?:DB::Exception: )?(.*?)(?: \(([A-Z_]+)\))?(?:\s*\(version [^)]*\))?$", re.DOTALL
)


def root_reason(err: BaseException) -> str:
    """The most telling short phrase of ``err`` and its causes (``Connection refused``, a ClickHouse message)."""
    texts: list[str] = []
    e: BaseException | None = err
    while e is not None and len(texts) < 8:
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    for t in texts:
        m = _ERRNO.search(t)
        if m:
            return m.group(1).strip()
    for t in texts:
        m = _CH_CODE.search(t)
        if m:
            msg = m.group(2).split(". Expected one of")[0]
            return f"{msg.strip()} ({m.group(3)})" if m.group(3) else msg.strip()
    return texts[0] if texts else type(err).__name__


def flag_of(field: str) -> str:
    """The ``run`` flag of a settings field (``model_dir`` -> ``--model``), or ``LIFECYCLE_<FIELD>``."""
    special = {"model_dir": "--model"}
    return special.get(field, "--" + field.replace("_", "-"))


def validation_line(err: ValidationError) -> str:
    """A settings ``ValidationError`` as one line: ``--store (LIFECYCLE_STORE): store must be ...``."""
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e.get("loc", ()) if isinstance(x, str)]
        msg = str(e.get("msg", "")).removeprefix("Value error, ")
        if loc:
            field = loc[0]
            value = e.get("input")
            shown = "" if "password" in field or "config" in field else f" {redact(str(value))!r}"
            parts.append(
                f"{flag_of(field)} (LIFECYCLE_{field.upper()}){shown if e['type'] != 'value_error' else ''}: {msg}"
            )
        else:
            parts.append(msg)
    return "; ".join(parts)


#: Reasons that say the other side is not there (rather than refusing what was sent).
_UNREACHABLE = re.compile(
    r"connection refused|name or service not known|timed out|no route to host|network is unreachable|"
    r"connection reset|temporary failure in name resolution|unavailable",
    re.IGNORECASE,
)


def classify(err: BaseException) -> CliError:
    """The :class:`CliError` for ``err``: its class decides the exit code, its message the one line.

    Errors that escaped the command without a class of their own are looked up by type here; anything
    unknown is :data:`EXIT_FAILURE` (an unexpected failure, worth a bug report with ``--debug`` output).
    """
    cause = _innermost_known(err)
    if isinstance(cause, CliError):
        return cause
    if isinstance(cause, ValidationError):
        return ConfigError(f"invalid setting: {validation_line(cause)}")
    if isinstance(cause, RuleError):
        return ConfigError(str(cause))
    if isinstance(cause, ArtifactError):
        return ConfigError(f"model: {cause} (--model / LIFECYCLE_MODEL_DIR: a directory written by `lifecycle train`)")
    if isinstance(cause, StateError):
        return ConfigError(str(cause))
    if isinstance(cause, MigrationError):
        return ConfigError(f"schema migrations: {cause}")
    if isinstance(cause, KafkaSourceError):
        return UnavailableError(f"kafka: {cause}")
    if isinstance(cause, StoreError):
        reason = root_reason(cause)
        if getattr(cause, "transient", False) or _UNREACHABLE.search(reason):
            return UnavailableError(f"store: {reason}; is the server up and --store (LIFECYCLE_STORE) right?")
        return DataError(f"store: {reason}")
    if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
        return UnavailableError(f"address already in use ({cause}); choose another port")
    if isinstance(cause, IsADirectoryError):
        return ConfigError(f"{cause.filename}: is a directory, not a file")
    if isinstance(cause, FileNotFoundError):
        return ConfigError(str(cause) if cause.filename is None else f"{cause.filename}: no such file")
    if isinstance(cause, PermissionError):
        return ConfigError(f"{cause.filename or cause}: permission denied")
    if isinstance(cause, ValueError):
        return ConfigError(str(cause))
    return CliError(f"unexpected {type(err).__name__}: {err} (a bug? rerun with --debug and report the traceback)")


def _innermost_known(err: BaseException) -> BaseException:
    """``err``, or the first of its causes that the policy knows (Bytewax wraps a step's exception)."""
    known = (CliError, ValidationError, RuleError, ArtifactError, StateError, KafkaSourceError, StoreError, OSError,
             ValueError)  # fmt: skip
    e: BaseException | None = err
    seen: list[Any] = []
    while e is not None and e not in seen:
        seen.append(e)
        if isinstance(e, known):
            return e
        e = e.__cause__ or e.__context__
    return err
