-- Core tables of lifecycle-scoring. Applied in file order by the pipeline at start-up;
-- every statement is idempotent (IF NOT EXISTS). Columns are documented in docs/schema.md.

-- Latest score per user. One row per user under FINAL: the highest `version` wins
-- (version = the shard's event-time clock in ms when the score was computed, monotonic
-- per user, so a replay of the same events writes the same versions and changes nothing).
CREATE TABLE IF NOT EXISTS user_scores
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
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY user_id;

-- Every stage change (and every user's first stage, from_stage = 'none'): what
-- marketing automation triggers on. Append-only history.
CREATE TABLE IF NOT EXISTS stage_transitions
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
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(at)
ORDER BY (user_id, to_stage, at)
TTL toDateTime(at) + INTERVAL 730 DAY;

-- Dead letters: every rejected event, with its original bytes, reason and source position.
CREATE TABLE IF NOT EXISTS rejected_events
(
    received_at DateTime64(3, 'UTC'),
    reason      LowCardinality(String),
    detail      String,
    source      String,
    partition   Int32,
    offset      Int64,
    payload     String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (source, partition, offset, reason)
TTL toDateTime(received_at) + INTERVAL 90 DAY;
