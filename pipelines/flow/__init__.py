"""The Bytewax dataflow and the one composition root; the only place (with io's connectors) that sees Bytewax.

* :mod:`dataflow`: ``build_flow(source, sink=...)`` wires source -> decode -> shard -> state ->
  score -> label -> sink. It takes its source and sinks as arguments, so a test runs it in
  process with ``bytewax.testing.TestingSource`` / ``TestingSink`` and no engine.
* :mod:`runner`: settings -> store, model, metrics, source, sinks, flow, run (the composition root).
* :mod:`recovery`: Bytewax's recovery store: erasure from shard snapshots, through
  :class:`pipelines.core.shard.ShardProcessor`'s own restore/erase/snapshot.
* :mod:`main`: the flow as a module attribute for ``python -m bytewax.run``.

Resume semantics: with a recovery store, a restarted flow resumes every source partition at the
position of the last committed epoch and every shard from that epoch's snapshot; the sinks have
written everything before the epoch committed, so a restart repeats writes and loses none.
"""

__all__ = ["dataflow", "main", "recovery", "runner"]
