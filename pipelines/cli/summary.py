"""The end-of-run summary printed by ``lifecycle run --summary`` and ``make demo``.

Reads what the run wrote, from the store itself (so the summary shows what
downstream readers will see), plus the run's own counters.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from pipelines.cli.format import count, duration
from pipelines.flow.runner import RunResult
from pipelines.io.store.base import Store

READ_SQL = """SELECT stage, count() AS users, round(avg(churn_risk), 3) AS avg_churn_risk
FROM user_scores FINAL
GROUP BY stage ORDER BY users DESC"""

AT_RISK_SQL = """SELECT user_id, stage, tier, round(churn_risk, 3) AS churn_risk,
       round(purchase_propensity, 3) AS purchase_propensity, reasons
FROM user_scores FINAL
WHERE at_risk
ORDER BY churn_risk DESC, user_id
LIMIT 10"""

ACTIONS_SQL = """SELECT action, count() AS users, argMax(action_rule, c) AS top_rule
FROM (
    SELECT action, action_rule, count() OVER (PARTITION BY action, action_rule) AS c
    FROM user_scores FINAL
)
GROUP BY action ORDER BY users DESC"""


def end_of_run_line(r: RunResult) -> str:
    """Every counter of the run, as a sentence: events, rate, applied, duplicates, opted out, rejects, rows."""
    rate = r.events_in / r.seconds if r.seconds > 0 else 0.0
    rejected = sum(r.rejected.values())
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r.rejected.items(), key=lambda kv: -kv[1]))
    rows = ", ".join(f"{v:,} {k}" for k, v in sorted(r.rows_written.items())) or "none"
    granted = sum(r.actions_granted.values())
    parts = [
        f"Read {count(r.events_in, 'event')} in {duration(r.seconds)} ({rate:,.0f} events/s)",
        f"{r.events_applied:,} applied",
        f"{r.duplicates:,} duplicate{'s' if r.duplicates != 1 else ''}",
        f"{r.opted_out:,} opted out",
        f"{rejected:,} rejected" + (f" ({reasons})" if reasons else ""),
    ]
    line = ", ".join(parts) + f". Rows written: {rows}. Actions granted: {granted:,}."
    if r.events_resumed:
        line += (
            f" Resumed: {count(r.events_resumed, 'event')} read by the previous run were applied in this one "
            f"({count(r.events_in + r.events_resumed, 'event')} over both)."
        )
    return line


def print_summary(console: Console, store: Store, result: RunResult, store_url: str) -> None:
    """Events, rejects by reason, stage and tier distribution, top at-risk users, how to read the data."""
    console.print("\n" + end_of_run_line(result), highlight=False, soft_wrap=True)
    if result.rejected:
        t = Table(title="Rejected events (dead letters in rejected_events)")
        t.add_column("reason")
        t.add_column("events", justify="right")
        for reason, n in sorted(result.rejected.items(), key=lambda kv: -kv[1]):
            t.add_row(reason, f"{n:,}")
        console.print(t)

    stages = store.query(READ_SQL).to_pylist()
    t = Table(title="Lifecycle stages (user_scores FINAL)")
    for c in ("stage", "users", "avg churn risk"):
        t.add_column(c, justify="right" if c != "stage" else "left")
    for r in stages:
        t.add_row(r["stage"], f"{r['users']:,}", f"{r['avg_churn_risk']:.3f}")
    console.print(t)

    tiers = store.query(
        "SELECT tier, count() AS users, countIf(at_risk) AS at_risk FROM user_scores FINAL GROUP BY tier "
        "ORDER BY users DESC"
    ).to_pylist()
    t = Table(title="Value tiers")
    for c in ("tier", "users", "at-risk"):
        t.add_column(c, justify="right" if c != "tier" else "left")
    for r in tiers:
        t.add_row(r["tier"], f"{r['users']:,}", f"{r['at_risk']:,}")
    console.print(t)

    top = store.query(AT_RISK_SQL).to_pylist()
    # user ids only to a person at a terminal: a summary written to a file or a journal is a log line
    ids = console.is_terminal
    t = Table(title="Top at-risk users, with reasons" + ("" if ids else " (ids on a terminal only)"))
    for c in ("user_id", "stage", "tier", "churn risk", "propensity", "reasons"):
        t.add_column(c)
    for r in top:
        t.add_row(
            r["user_id"] if ids else "-",
            r["stage"],
            r["tier"],
            f"{r['churn_risk']:.3f}",
            f"{r['purchase_propensity']:.3f}",
            "; ".join(r["reasons"]),
        )
    console.print(t)

    actions = store.query(ACTIONS_SQL).to_pylist()
    t = Table(title="Next-best actions (current action per user; granted during this run)")
    for c in ("action", "users", "granted", "most frequent rule"):
        t.add_column(c, justify="left" if c in ("action", "most frequent rule") else "right")
    for r in actions:
        granted = result.actions_granted.get(r["action"], 0)
        t.add_row(r["action"], f"{r['users']:,}", f"{granted:,}" if r["action"] != "none" else "", r["top_rule"])
    console.print(t)

    trans = store.query(
        "SELECT from_stage, to_stage, count() AS n FROM stage_transitions FINAL WHERE from_stage != 'none' "
        "GROUP BY from_stage, to_stage ORDER BY n DESC LIMIT 8"
    ).to_pylist()
    if trans:
        console.print(
            "[bold]Most frequent transitions:[/bold] "
            + ", ".join(f"{r['from_stage']}→{r['to_stage']} {r['n']:,}" for r in trans)
        )
    console.print(f"\n[bold]Data:[/bold] {store_url}  (tables user_scores, stage_transitions, rejected_events)")
    console.print("Read it with SQL (chDB allows one process per store, so stop the pipeline first):")
    one_line = " ".join(READ_SQL.split())
    console.print(f'  lifecycle query --store {store_url} "{one_line}"', soft_wrap=True)
