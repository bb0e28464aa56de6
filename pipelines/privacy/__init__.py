"""PIPL in the store: consent (opt-out of automated marketing) and erasure of a user's rows.

* :mod:`consent`: :class:`consent.ConsentFilter`, the pipeline's view of opted-out and
  no-marketing users, refreshed on a cadence.
* :mod:`erasure`: ``forget_user`` deletes every row of a user from every table that holds user
  data, synchronously, and logs it; ``set_consent`` records opt-outs.

Erasure from the pipeline's own recovery snapshots is Bytewax's format and lives behind
:mod:`pipelines.flow.recovery`; ``lifecycle forget`` runs both, the state first.
"""

__all__ = ["consent", "erasure"]
