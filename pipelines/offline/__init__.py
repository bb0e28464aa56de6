"""Offline work over event histories: loading, training sets, batch scoring, rescoring, the simulator.

Nothing here has its own notion of an event, a feature or a label: history files go through the
streaming decoder (:func:`history.load_history`, the one loader), replays through the streaming
state, rows through THE label step (:mod:`pipelines.core.labels`).

* :mod:`history` (read, replay, rows as of an instant), :mod:`score` (``lifecycle score``),
  :mod:`rescore` (``lifecycle rescore``), :mod:`training` (training sets and holdouts),
  :mod:`drift_reference` (the streaming drift reference, by replay).
* :mod:`simulate`, :mod:`sim_params`, :mod:`simulate_io`: synthetic private-domain users and
  where their events go (files, batches, a Kafka topic).
"""

__all__ = ["drift_reference", "history", "rescore", "score", "sim_params", "simulate", "simulate_io", "training"]
