-- Cluster variant of sql/migrations/0004_consent_and_erasure.sql. consent and erasure_log are small
-- and read everywhere (every audience query filters on consent inside a distributed query), so each
-- node holds a full copy (Keeper path without {shard}) instead of a sharded table: the consent
-- subquery then reads locally on every shard, which a Distributed consent table would not allow
-- (double-distributed IN). Requires {replica} to be unique cluster-wide.

CREATE TABLE IF NOT EXISTS consent ON CLUSTER '{cluster}'
(
    user_id    String,
    opted_out  Bool,
    updated_at DateTime64(3, 'UTC'),
    source     LowCardinality(String)
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/consent', '{replica}', updated_at)
ORDER BY user_id
SETTINGS replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS erasure_log ON CLUSTER '{cluster}'
(
    user_hash    String,
    erased_at    DateTime64(3, 'UTC'),
    reason       String,
    rows_deleted Map(LowCardinality(String), UInt64)
)
ENGINE = ReplicatedMergeTree('/clickhouse/tables/{database}/erasure_log', '{replica}')
ORDER BY (erased_at, user_hash);
