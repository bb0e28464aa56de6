-- PIPL: consent (opt-out of automated-decision marketing, Art. 24) and the record of erasures.
-- Columns are documented in docs/schema.md.

-- Latest consent per user: the newest updated_at wins under FINAL. Written by
-- pipelines.erasure.set_consent (`lifecycle consent`); read by the pipeline (opted-out users are
-- not scored or written) and by every audience query in sql/queries.
CREATE TABLE IF NOT EXISTS consent
(
    user_id    String,
    opted_out  Bool,
    updated_at DateTime64(3, 'UTC'),
    source     LowCardinality(String)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY user_id
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per erasure (`lifecycle forget`). Holds a SHA-256 of the user id, never the id itself, so
-- the log proves an erasure happened without keeping the identifier. No TTL: it is the audit trail.
CREATE TABLE IF NOT EXISTS erasure_log
(
    user_hash    String,
    erased_at    DateTime64(3, 'UTC'),
    reason       String,
    rows_deleted Map(LowCardinality(String), UInt64)
)
ENGINE = MergeTree
ORDER BY (erased_at, user_hash);
