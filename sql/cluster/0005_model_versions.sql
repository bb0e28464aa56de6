-- Cluster variant of sql/migrations/0005_model_versions.sql: a full copy on every node.
CREATE TABLE IF NOT EXISTS model_versions ON CLUSTER '{cluster}'
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/model_versions', '{replica}', registered_at)
ORDER BY model_version;
