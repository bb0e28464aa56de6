-- Cluster variant of sql/migrations/0003_score_history.sql. The materialized view runs on each shard
-- over user_scores_local, so a user's history lives on the shard that holds the user's scores.

CREATE TABLE IF NOT EXISTS score_history_local ON CLUSTER '{cluster}'
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/score_history_local', '{replica}', scored_at)
PARTITION BY toYYYYMM(at)
ORDER BY (user_id, version)
TTL toDateTime(at) + INTERVAL 400 DAY
SETTINGS replicated_deduplication_window = 1000;

CREATE MATERIALIZED VIEW IF NOT EXISTS score_history_mv ON CLUSTER '{cluster}' TO score_history_local AS
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
FROM user_scores_local
WHERE is_deleted = 0;

CREATE TABLE IF NOT EXISTS score_history ON CLUSTER '{cluster}' AS score_history_local
ENGINE = Distributed('{cluster}', currentDatabase(), score_history_local, cityHash64(user_id));
