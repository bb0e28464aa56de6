-- Cluster variant of sql/migrations/0001_core_tables.sql, for deployments that outgrow one node.
-- Layout (docs/schema.md#cluster-variant): per-shard replicated tables named <table>_local, and a
-- Distributed table under the single-node name over them, so writers and every query in sql/queries
-- work unchanged. Rows are sharded by cityHash64(user_id): all rows of a user live on one shard, so
-- FINAL (applied per shard) still yields one row per user. Needs the macros {cluster}, {shard},
-- {replica} in the server config and ClickHouse Keeper. Writers should run with
-- distributed_foreground_insert = 1 (in their settings profile), so an insert returns after the
-- shards committed it.

CREATE TABLE IF NOT EXISTS user_scores_local ON CLUSTER '{cluster}'
(
    user_id             String,
    stage               LowCardinality(String),
    tier                LowCardinality(String),
    at_risk             Bool,
    churn_risk          Float32,
    purchase_propensity Float32,
    reasons             Array(String),
    model_version       LowCardinality(String),
    last_event_at       DateTime64(3, 'UTC'),
    scored_at           DateTime64(3, 'UTC'),
    version             UInt64,
    is_deleted          UInt8 DEFAULT 0
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/user_scores_local', '{replica}', version, is_deleted)
ORDER BY user_id;

CREATE TABLE IF NOT EXISTS user_scores ON CLUSTER '{cluster}' AS user_scores_local
ENGINE = Distributed('{cluster}', currentDatabase(), user_scores_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS stage_transitions_local ON CLUSTER '{cluster}'
(
    user_id             String,
    from_stage          LowCardinality(String),
    to_stage            LowCardinality(String),
    at                  DateTime64(3, 'UTC'),
    churn_risk          Float32,
    purchase_propensity Float32,
    reasons             Array(String),
    model_version       LowCardinality(String),
    version             UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/stage_transitions_local', '{replica}', version)
PARTITION BY toYYYYMM(at)
ORDER BY (user_id, to_stage, at)
TTL toDateTime(at) + INTERVAL 730 DAY;

CREATE TABLE IF NOT EXISTS stage_transitions ON CLUSTER '{cluster}' AS stage_transitions_local
ENGINE = Distributed('{cluster}', currentDatabase(), stage_transitions_local, cityHash64(user_id));

-- Dead letters are sharded by source position: a replayed dead letter lands on the shard that holds
-- the first copy and collapses under FINAL.
CREATE TABLE IF NOT EXISTS rejected_events_local ON CLUSTER '{cluster}'
(
    received_at DateTime64(3, 'UTC'),
    reason      LowCardinality(String),
    detail      String,
    source      String,
    partition   Int32,
    offset      Int64,
    payload     String
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/rejected_events_local', '{replica}')
PARTITION BY toYYYYMM(received_at)
ORDER BY (source, partition, offset, reason)
TTL toDateTime(received_at) + INTERVAL 90 DAY;

CREATE TABLE IF NOT EXISTS rejected_events ON CLUSTER '{cluster}' AS rejected_events_local
ENGINE = Distributed('{cluster}', currentDatabase(), rejected_events_local, cityHash64(source, partition, offset));
