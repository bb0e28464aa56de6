-- Full score history: every score row the pipeline writes to user_scores, kept for 400 days of event
-- time (change with ALTER TABLE score_history MODIFY TTL ..., see docs/schema.md).
-- Filled by a materialized view on user_scores, so every writer of user_scores (the flow, backfills)
-- writes history too, in the same insert. Columns are documented in docs/schema.md.

-- ReplacingMergeTree keyed by (user_id, version): a replay writes the same (user, version) again and
-- collapses under FINAL, as in user_scores. PARTITION BY month of `at` (= version as a time), so all
-- copies of a row share a partition and always collapse.
CREATE TABLE IF NOT EXISTS score_history
(
    user_id             String,
    at                  DateTime64(3, 'UTC'),
    stage               LowCardinality(String),
    tier                LowCardinality(String),
    at_risk             Bool,
    churn_risk          Float32,
    purchase_propensity Float32,
    reasons             Array(String),
    model_version       LowCardinality(String),
    last_event_at       DateTime64(3, 'UTC'),
    scored_at           DateTime64(3, 'UTC'),
    version             UInt64
)
ENGINE = ReplacingMergeTree(scored_at)
PARTITION BY toYYYYMM(at)
ORDER BY (user_id, version)
TTL toDateTime(at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS score_history_mv TO score_history AS
SELECT
    user_id,
    fromUnixTimestamp64Milli(toInt64(version), 'UTC') AS at,
    stage,
    tier,
    at_risk,
    churn_risk,
    purchase_propensity,
    reasons,
    model_version,
    last_event_at,
    scored_at,
    version
FROM user_scores
WHERE is_deleted = 0;
