"""What the pipeline tells its operators: Prometheus metrics and model drift.

* :mod:`metrics`: :class:`metrics.PipelineMetrics` registers every metric on an injected
  ``CollectorRegistry`` (a fresh one per test); labels are bounded sets (reasons, tables,
  stages, actions, shards), never a user id.
* :mod:`drift`: :class:`drift.DriftMonitor` bins scored rows against the model's training
  reference and sets the PSI gauges. The binning and PSI maths are :mod:`models.reference`'s,
  the same that built the artifact's reference block.
"""

__all__ = ["drift", "metrics"]
