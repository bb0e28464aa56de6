-- Deduplication of retried inserts, a cursor for incremental pulls of transitions, and a user key on
-- dead letters (so erasure can find them). Idempotent: MODIFY SETTING and ADD COLUMN IF NOT EXISTS can
-- run again; MATERIALIZE COLUMN only fills parts that lack the column, so a re-run changes nothing.
-- Columns are documented in docs/schema.md.

-- A block inserted again with the same insert_deduplication_token (a retry after a lost response) is
-- dropped by the server instead of written twice. The last 1000 blocks per table are remembered;
-- replays older than that still collapse under FINAL (every table here is a ReplacingMergeTree).
ALTER TABLE user_scores MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE stage_transitions MODIFY SETTING non_replicated_deduplication_window = 1000;
ALTER TABLE rejected_events MODIFY SETTING non_replicated_deduplication_window = 1000;

-- Server time at insert. `at` is event time: a shard whose clock lags writes transitions with an `at`
-- older than rows another shard already wrote, so an incremental pull on `at` would skip them;
-- a pull on `inserted_at` (with a small safety lag, see sql/queries/transitions_since.sql) does not.
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3);
-- Rows written before this migration get the migration time (else now64() would be evaluated at
-- every read and they would show up in every pull).
ALTER TABLE stage_transitions MATERIALIZE COLUMN inserted_at SETTINGS mutations_sync = 2;

-- The producer's user id, extracted from the original bytes at insert ('' when the payload is not JSON
-- or has no string user_id). Lets erasure delete a user's dead letters by key.
ALTER TABLE rejected_events ADD COLUMN IF NOT EXISTS user_id String DEFAULT JSONExtractString(payload, 'user_id');
