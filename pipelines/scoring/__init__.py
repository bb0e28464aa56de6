"""The scoring engine: feature rows -> churn risk, purchase propensity and reason codes, on CPU or CUDA.

:class:`scorer.Scorer` is the one entry point (stream, batch scoring, rescore, benchmarks):
``score(features)`` returns :class:`pipelines.core.scores.Scores` for exactly the given rows, in
order, whatever the micro-batch size or device. The model itself stays in :mod:`models`; the
engines (:mod:`cpu`, :mod:`cuda`, over the fused maths of :mod:`fused`) execute it and check
themselves against the reference maths when built. A CUDA failure at any time falls back to the
CPU with one warning (:mod:`device`); an out-of-memory error halves the micro-batch.
:mod:`batcher` is the asynchronous, coalescing front end for backfills.
"""

__all__ = ["batcher", "cpu", "cuda", "device", "fused", "scorer"]
