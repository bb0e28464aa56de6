"""The pure core: per-user state, features, stage rules, playbooks, one shard's step and THE label step.

No I/O, no Bytewax, no torch: functions over numpy arrays and frozen dataclasses, unit-tested
directly. Imports only :mod:`pipelines.contract`.

* :mod:`state` (columnar per-user state), :mod:`dedup`, :mod:`timers`, :mod:`features` (the one
  feature implementation for streaming, training and batch scoring), :mod:`retention` (the memory
  bounds of state: the new-user rate guard and the eviction of long-churned users).
* :mod:`rules` (the safe rule language), :mod:`taxonomy` (stages, tiers, at-risk as configuration),
  :mod:`defaults` (the shipped default taxonomy and playbook), :mod:`playbook` and :mod:`ledger`
  (next-best actions with cooldowns and caps, kept in shard state).
* :mod:`shard`: :class:`shard.ShardProcessor`, one shard's processing step; :mod:`evaluated`
  (:class:`evaluated.FeatureRows`, the users it evaluated at a tick) and :mod:`watch` (the at-risk
  watch: users whose model-driven flag flips before their next refresh are evaluated every tick). Its
  ``snapshot()`` / ``restore()`` are the recovery contract: a processor restored from a
  snapshot behaves exactly as the one that took it, and erasure goes through them too.
* :mod:`scores` (what the model says: the contract with :mod:`pipelines.scoring`),
  :mod:`labels` (THE label step: scores -> tier/at-risk -> actions -> rows, used by the
  stream, rescore and score) and :mod:`rows` (the Arrow layout of the store's tables).
"""

__all__ = [
    "dedup",
    "defaults",
    "evaluated",
    "features",
    "labels",
    "ledger",
    "playbook",
    "retention",
    "rows",
    "rules",
    "scores",
    "shard",
    "state",
    "taxonomy",
    "timers",
    "watch",
]
