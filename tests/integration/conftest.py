from __future__ import annotations

from collections.abc import Iterator

import pytest

try:  # tests/ as a package (rootdir on sys.path) or as plain directories (pytest's prepend import mode)
    from tests.integration.broker import TansuBroker
except ImportError:
    from broker import TansuBroker  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """One tansu broker for the session; ``create_topic(partitions=N)`` gives each test its own topic."""
    with TansuBroker() as broker:
        yield broker
