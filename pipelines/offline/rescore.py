"""``lifecycle rescore``: score every user in the store with a new model, from the event history.

The store holds scores, not features, so features are rebuilt the only way
that cannot drift from streaming: the event history is replayed through
:class:`~pipelines.core.state.ShardState` up to the as-of instant and read with
:func:`~pipelines.core.features.compute_features` (the code of the flow, of
``lifecycle train`` and ``lifecycle score``). Then, page by page of the store's
users (keyset pagination on ``user_id``, so memory does not grow with the
store), features are computed for the page, scored on the device through the
scorer's dynamic batcher (a worker thread, so the next page's features are
built while this one is scored) and written to ``user_scores`` with
:func:`~pipelines.core.rows.score_records`, the column layout of the flow; the
``score_history`` view records them too.

Which rows win - the version rule. ``user_scores`` is a ReplacingMergeTree on
``version``, the event-time clock (ms) a score was computed at. A rescore at
as-of ``A`` writes ``version = A + 1``. ``A`` defaults to the newer of the
history's newest event and the newest ``version`` in ``user_scores``, so every
rescored row outranks every row already written (ties are avoided on purpose:
between equal versions ClickHouse keeps the last inserted row, an ordering a
concurrent writer could change), while the stream, whose next score of a user
comes from a later event, outranks the rescore again. Users are left as they
are, and counted, when:

* the store's row already has a version >= ``A + 1`` (an explicit ``--as-of``
  before the store's clock: writing would lose under FINAL anyway);
* the store saw a newer event of the user than the history holds (the
  history is incomplete for them: their rescore would be stale);
* the user has no events in the history (``missing``);
* the user opted out of automated scoring (``consent``): never re-scored.

Users erased with ``lifecycle forget`` have no row in ``user_scores``, so a
rescore, which only visits users in the store, cannot bring them back even if
the history still holds their events. Stage transitions are not written: the
streaming state owns each user's previous stage and emits the transition when
its own clock gets there (a rescore writing them too would duplicate them).

Taxonomy changes: rows are labelled with the configured taxonomy
(``LIFECYCLE_TAXONOMY``), so changing the taxonomy and rescoring re-labels
every user without touching the stream's raw state. Playbook actions are not
re-decided: a user's current action, its rule and time are the stream's
decisions (cooldowns and caps live in the stream's state), so they are carried
over from the store's row unchanged and no action becomes "fresh" again.

Operate it after the stream runs the new model (or is stopped): a stream
still on the old model would write old-model scores again at each user's next
event.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipelines.contract.events import EventColumns
from pipelines.contract.ids import hash_strings
from pipelines.contract.time import NEVER
from pipelines.core.defaults import default_taxonomy
from pipelines.core.features import compute_features
from pipelines.core.labels import CarriedActions, label_rows
from pipelines.core.rows import ACTION_COLUMNS
from pipelines.core.scores import Scores
from pipelines.core.state import ShardState
from pipelines.core.taxonomy import Taxonomy
from pipelines.io.store.base import Store, record_model_version
from pipelines.offline.history import rows_as_of, sort_by_time, state_as_of
from pipelines.privacy.erasure import opted_out_users
from pipelines.scoring.scorer import Scorer

log = logging.getLogger(__name__)

#: users per page read from the store (and per insert)
PAGE_ROWS = 100_000
#: pages scored ahead of the insert that is running (the batcher's queue)
PAGES_IN_FLIGHT = 2

_PAGE_SQL = (
    "SELECT user_id, version, toInt64(toUnixTimestamp64Milli(last_event_at)) AS last_event_ms, "
    f"{', '.join(ACTION_COLUMNS)} "
    "FROM user_scores FINAL WHERE user_id > {after:String} ORDER BY user_id LIMIT {n:UInt64}"
)


@dataclass(frozen=True, slots=True)
class RescoreResult:
    """What a rescore did; every user of the store is in exactly one of the counts."""

    model_version: str
    as_of_ms: int
    version: int  # of every row written: as_of_ms + 1
    events: int  # events replayed (at or before as-of)
    users_in_store: int
    rescored: int
    missing: int  # in the store, no events in the history
    newer_in_store: int  # the store's row is newer than the history or the as-of
    opted_out: int
    seconds: float


def store_clock_ms(store: Store) -> int:
    """The newest ``version`` in ``user_scores`` (0 when empty): the store's event-time clock."""
    rows = store.query("SELECT max(version) AS v FROM user_scores").to_pylist()
    return int(rows[0]["v"] or 0) if rows else 0


def rescore(
    store: Store,
    scorer: Scorer,
    events: EventColumns,
    *,
    as_of_ms: int | None = None,
    taxonomy: Taxonomy | None = None,
    page_rows: int = PAGE_ROWS,
    clock: Callable[[], float] = time.time,
    on_page: Callable[[int], None] | None = None,
) -> RescoreResult:
    """Score every user of ``store`` with ``scorer``'s model as of ``as_of_ms`` (see the module docstring)."""
    t0 = time.perf_counter()
    taxonomy = taxonomy or default_taxonomy()
    if len(events) == 0:
        raise ValueError("the event history is empty: nothing to rebuild features from")
    ev = sort_by_time(events)
    as_of = as_of_ms if as_of_ms is not None else max(int(ev.ts_ms[-1]), store_clock_ms(store))
    ev = ev.take(ev.ts_ms <= as_of)
    st = state_as_of(ev, as_of)
    log.info("rescore: replayed %d events of %d users up to %d (ms)", len(ev), st.n, as_of)
    record_model_version(store, scorer.artifact.meta)
    opted = opted_out_users(store)
    writer = _Writer(store, scorer, st, as_of, taxonomy, clock)
    counts = {"users": 0, "rescored": 0, "missing": 0, "newer": 0, "opted_out": 0}
    inflight: deque[tuple[_Page, Future[Scores]]] = deque()
    after = ""
    with scorer.batcher(max_queued_rows=PAGES_IN_FLIGHT * page_rows) as batcher:
        while True:
            tbl = store.query(_PAGE_SQL, params={"after": after, "n": page_rows})
            if tbl.num_rows == 0:
                break
            page = writer.select(tbl, opted, counts)
            after = page.last_id
            inflight.append((page, batcher.submit(page.features)))
            while len(inflight) > PAGES_IN_FLIGHT or (inflight and inflight[0][1].done()):
                writer.write(*inflight.popleft(), counts)
                if on_page is not None:
                    on_page(counts["users"])
            if tbl.num_rows < page_rows:
                break
        while inflight:
            writer.write(*inflight.popleft(), counts)
    if on_page is not None:
        on_page(counts["users"])
    return RescoreResult(
        model_version=scorer.model_version,
        as_of_ms=as_of,
        version=as_of + 1,
        events=len(ev),
        users_in_store=counts["users"],
        rescored=counts["rescored"],
        missing=counts["missing"],
        newer_in_store=counts["newer"],
        opted_out=counts["opted_out"],
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True, slots=True)
class _Page:
    last_id: str
    rows: npt.NDArray[np.int64]  # state rows of the users to rescore
    features: npt.NDArray[np.float32]
    carried: pa.Table  # the store rows' playbook/action columns, for the rescored users


class _Writer:
    """Selects a page's users, and turns their scores into ``user_scores`` rows."""

    def __init__(
        self,
        store: Store,
        scorer: Scorer,
        st: ShardState,
        as_of: int,
        taxonomy: Taxonomy,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.scorer = scorer
        self.st = st
        self.as_of = as_of
        self.taxonomy = taxonomy
        self.clock = clock

    def select(self, tbl: pa.Table, opted: frozenset[str], counts: dict[str, int]) -> _Page:
        st = self.st
        ids = np.asarray(tbl.column("user_id").to_numpy(zero_copy_only=False), dtype=object)
        stored_version = tbl.column("version").to_numpy().astype(np.int64)
        stored_last = tbl.column("last_event_ms").to_numpy().astype(np.int64)
        rows = st.lookup(hash_strings(ids)) if st.n else np.full(ids.shape[0], -1, np.int64)
        found = rows >= 0
        found[found] = st.user_id[rows[found]] == ids[found]  # a 64-bit key collision is not this user
        safe = np.where(found, rows, 0)
        history_last = np.where(found, st.ts["ref_ts"][safe], NEVER)
        opted_mask = np.isin(ids, np.array(sorted(opted), dtype=object)) if opted else np.zeros(ids.shape[0], bool)
        newer = found & ((stored_version > self.as_of) | (stored_last > history_last))
        keep = found & ~newer & ~opted_mask
        counts["users"] += ids.shape[0]
        counts["opted_out"] += int(opted_mask.sum())
        counts["missing"] += int((~found & ~opted_mask).sum())
        counts["newer"] += int((newer & ~opted_mask).sum())
        sel = rows[keep]
        feats = compute_features(st, sel, self.as_of)  # an empty page gives a 0 x N_FEATURES matrix
        carried = tbl.select(list(ACTION_COLUMNS)).filter(pa.array(keep))
        return _Page(str(ids[-1]), sel, feats, carried)

    def write(self, page: _Page, fut: Future[Scores], counts: dict[str, int]) -> None:
        scores = fut.result()
        n = page.rows.shape[0]
        if n == 0:
            return
        rows = rows_as_of(self.st, page.rows, self.as_of, self.taxonomy, version=self.as_of + 1, features=page.features)
        # the stream's action decisions stay as they are (module docstring)
        labeled = label_rows(
            rows,
            scores,
            self.taxonomy,
            CarriedActions(page.carried),
            model_version=self.scorer.model_version,
            scored_at_ms=int(self.clock() * 1000),
        )
        for r in labeled.records:
            if r.table == "user_scores":
                self.store.insert("user_scores", r.data)
        counts["rescored"] += n
