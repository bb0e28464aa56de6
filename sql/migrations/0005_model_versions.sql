-- The model artifacts that have scored users: what user_scores.model_version refers to.
-- Written by pipelines.io.store.record_model_version at pipeline start (one row per start, the newest
-- registration wins under FINAL). Columns are documented in docs/schema.md.
CREATE TABLE IF NOT EXISTS model_versions
(
    model_version    String,
    schema_hash      String,
    horizon_days     UInt16,
    as_of            String,
    created_at       String,
    data_fingerprint String,
    metrics          String,
    registered_at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(registered_at)
ORDER BY model_version;
