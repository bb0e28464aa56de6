"""The ``lifecycle`` command: one module per command group, each a thin layer over the runner and offline.

* :mod:`main`: the parser and exit codes; :mod:`run`: ``run`` (each flag shows the env var behind it);
  :mod:`simulate`: ``simulate``; :mod:`query`: ``query``.
* :mod:`model`: ``train``, ``score``, ``evaluate``; :mod:`rescore`: ``rescore``;
  :mod:`db`: ``db migrate``, ``forget``, ``consent``; :mod:`summary`: the end-of-run summary.

Operator mistakes end in one line on stderr and a non-zero exit code.
"""

__all__ = ["db", "main", "model", "query", "rescore", "run", "simulate", "summary"]
