"""The consent filter fails closed: before the opt-out list has been read once, no event passes.

Before, a first load that failed left an empty opt-out list in place, and opted-out users were scored
(and could be marketed to) until a later refresh succeeded. The store here is real (chDB); it simply has
no ``consent`` table until the injected ``sleep`` (the filter's wait between retries) migrates it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from pipelines.io.store.chdb import ChdbStore
from pipelines.io.store.migrations import migrate
from pipelines.monitoring.metrics import PipelineMetrics
from pipelines.privacy.consent import ConsentFilter
from pipelines.privacy.erasure import set_consent
from pipelines.settings import Settings
from tests.support.events import T0, columns


def test_no_event_passes_until_the_first_consent_load_succeeds(tmp_path: Path) -> None:
    store = ChdbStore(tmp_path / "s.chdb")
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    seen: list[float | None] = []

    def sleep(seconds: float) -> None:  # the outage ends after three retries: the table appears, with an opt-out
        seen.append(registry.get_sample_value("lifecycle_consent_loaded"))
        if len(seen) == 3:
            migrate(store, Settings().sql_dir)
            set_consent(store, ["out"], True, "test")

    try:
        consent = ConsentFilter(store, sleep=sleep, metrics=metrics)
        keep = consent.keep(columns([("out", T0, "page_view"), ("in", T0, "page_view")]))
        assert seen == [0.0, 0.0, 0.0]  # it waited, saying so, and let nothing through meanwhile
        assert keep.tolist() == [False, True]  # the first answer already honours the opt-out
        assert registry.get_sample_value("lifecycle_consent_loaded") == 1.0
        assert consent.marketing_ok(np.zeros(1, np.int64)).tolist() == [True]
    finally:
        store.close()


def test_a_failed_refresh_keeps_the_last_list_instead_of_waiting(tmp_path: Path) -> None:
    store = ChdbStore(tmp_path / "s.chdb")
    migrate(store, Settings().sql_dir)
    set_consent(store, ["out"], True, "test")
    now = [0.0]
    try:
        consent = ConsentFilter(store, refresh_seconds=1.0, clock=lambda: now[0], sleep=lambda s: None)
        assert consent.keep(columns([("out", T0, "page_view")])).tolist() == [False]
        store.command("DROP TABLE consent")  # the store loses the table: refreshes fail from now on
        now[0] = 5.0
        assert consent.keep(columns([("out", T0, "page_view"), ("in", T0, "page_view")])).tolist() == [False, True]
    finally:
        store.close()
