-- Cluster variant of sql/migrations/0008_suppression.sql: a full copy per node, like consent (every
-- pipeline process reads it whole).
CREATE TABLE IF NOT EXISTS suppressed ON CLUSTER '{cluster}'
(
    user_hmac  String,
    suppressed Bool,
    updated_at DateTime64(3, 'UTC'),
    reason     LowCardinality(String)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/suppressed', '{replica}', updated_at)
ORDER BY user_hmac
SETTINGS replicated_deduplication_window = 1000;

ALTER TABLE erasure_log ON CLUSTER '{cluster}' MODIFY TTL toDateTime(erased_at) + INTERVAL 1095 DAY;
