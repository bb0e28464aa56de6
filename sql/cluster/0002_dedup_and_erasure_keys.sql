-- Cluster variant of sql/migrations/0002_dedup_and_erasure_keys.sql. Replicated tables deduplicate
-- retried blocks (same insert_deduplication_token) through Keeper; the window is set explicitly.
-- New columns go on the local tables and on the Distributed tables over them.

ALTER TABLE user_scores_local ON CLUSTER '{cluster}' MODIFY SETTING replicated_deduplication_window = 1000;
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' MODIFY SETTING replicated_deduplication_window = 1000;
ALTER TABLE rejected_events_local ON CLUSTER '{cluster}' MODIFY SETTING replicated_deduplication_window = 1000;

ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' MATERIALIZE COLUMN inserted_at SETTINGS mutations_sync = 2;
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3);

ALTER TABLE rejected_events_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS user_id String DEFAULT JSONExtractString(payload, 'user_id');
ALTER TABLE rejected_events ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS user_id String DEFAULT JSONExtractString(payload, 'user_id');
