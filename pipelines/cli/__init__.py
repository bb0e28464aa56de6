"""The ``lifecycle`` command: one module per command group, each a thin layer over the runner and offline.

* :mod:`main`: the parser, ``--version``, and the error policy applied to every command;
  :mod:`errors`: the error classes, their exit codes and the one-line messages; :mod:`preflight`:
  what is checked before anything is created; :mod:`logs`: log lines on stderr (rich or JSON).
* :mod:`run`: ``run`` (SIGINT/SIGTERM drain, progress, the end-of-run line); :mod:`flags`: its flags,
  each showing the env var behind it; :mod:`check`: ``check`` and ``run --dry-run``;
  :mod:`totals`: counters over every run into one state; :mod:`simulate`: ``simulate``;
  :mod:`query`: ``query`` (formats, parameters, shipped queries).
* :mod:`model`: ``train``, ``score``, ``evaluate``; :mod:`rescore`: ``rescore``;
  :mod:`db`: ``db migrate``, ``db status``, ``forget``, ``consent``; :mod:`summary`: the end-of-run
  summary; :mod:`format`: numbers and times as an operator reads them.

Operator mistakes end in one line on stderr and the exit code of their class (docs/operations.md).
"""

__all__ = [
    "check", "db", "errors", "flags", "format", "logs", "main", "model", "preflight", "query", "rescore", "run",
    "simulate", "summary", "totals",
]  # fmt: skip
