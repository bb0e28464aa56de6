r"""The dataflow as a module attribute, for Bytewax's own runner.

    LIFECYCLE_STORE=http://clickhouse:8123/lifecycle LIFECYCLE_INPUT=kafka://kafka:9092/events \
    python -m bytewax.run pipelines.flow.main:flow -i 0 -a "host0:2101;host1:2101" \
        -r /data/recovery -s 10 -b 0

Settings come from ``LIFECYCLE_*`` env vars only. Bytewax's flags replace the
cluster options of ``lifecycle run``: ``-w`` workers, ``-i`` process id, ``-a``
addresses, ``-r`` recovery directory (Bytewax accepts it only together with ``-s``
snapshot interval and ``-b`` backup interval). Importing the module opens the
store (applying migrations), loads the model and starts the metrics endpoint,
once per process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from pipelines.flow.runner import open_migrated_store, prepare_flow
from pipelines.settings import Settings

settings = Settings()
flow, _expected = prepare_flow(settings, registry=CollectorRegistry(), store=open_migrated_store(settings))
