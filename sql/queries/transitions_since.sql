-- Incremental pull of stage transitions for marketing automation (welcome, nurture, win-back triggers).
-- Returns the transitions the server received after `since` (exclusive) and up to `until` (inclusive);
-- keep `until` and pass it as the next `since`. The cursor is inserted_at (server time at insert), not
-- `at` (event time): shards write with different event clocks, so a pull on `at` would skip
-- transitions that arrive late. Take until = now() minus a few seconds, so inserts still in flight
-- (their inserted_at is set before they commit) fall into the next pull.
-- At-least-once: a pipeline replay writes a transition again (with a new inserted_at), so consumers
-- deduplicate on (user_id, to_stage, at). Users who opted out or refused marketing (marketing_refused) are left out.
-- Parameters: since DateTime64(3, 'UTC'), until DateTime64(3, 'UTC').
SELECT
    user_id,
    from_stage,
    to_stage,
    at,
    churn_risk,
    purchase_propensity,
    reasons,
    model_version,
    inserted_at
FROM stage_transitions FINAL
WHERE inserted_at > {since:DateTime64(3, 'UTC')}
  AND inserted_at <= {until:DateTime64(3, 'UTC')}
  AND user_id NOT IN (SELECT user_id FROM marketing_refused)
ORDER BY inserted_at, at, user_id
