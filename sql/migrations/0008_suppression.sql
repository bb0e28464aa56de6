-- Erased users stay erased: `suppressed` holds a keyed HMAC (LIFECYCLE_ERASURE_SALT) of every erased
-- user's id, never the id; the pipeline drops the events of a suppressed user before state, so a replay of
-- old events or a new event does not bring them back. An opt-in (`lifecycle consent --opt-in`) lifts it:
-- the newest row per user wins under FINAL. erasure_log's user_hash is the same HMAC, and the log is kept
-- for three years (the audit trail of erasures, not a list of who was erased). See docs/security.md.
CREATE TABLE IF NOT EXISTS suppressed
(
    user_hmac  String,
    suppressed Bool,
    updated_at DateTime64(3, 'UTC'),
    reason     LowCardinality(String)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY user_hmac
SETTINGS non_replicated_deduplication_window = 1000;

ALTER TABLE erasure_log MODIFY TTL toDateTime(erased_at) + INTERVAL 1095 DAY;
