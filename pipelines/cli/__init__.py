"""The ``lifecycle`` command: one module per command group, each a thin layer over the runner and offline.

* :mod:`main`: the parser, ``run``, ``simulate`` and ``query``; shows the env var behind each flag.
* :mod:`model`: ``train``, ``score``, ``evaluate``; :mod:`rescore`: ``rescore``;
  :mod:`db`: ``db migrate``, ``forget``, ``consent``; :mod:`summary`: the end-of-run summary.

Operator mistakes end in one line on stderr and a non-zero exit code.
"""

__all__ = ["db", "main", "model", "rescore", "summary"]
