-- The migration record of the cluster schema, created by the runner before any migration
-- (pipelines/migrations.py). One full copy on every node (its Keeper path has no {shard}), so
-- `lifecycle db migrate` may connect to any node. Requires {replica} to be unique cluster-wide.
CREATE TABLE IF NOT EXISTS schema_migrations ON CLUSTER '{cluster}'
(
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{database}/schema_migrations', '{replica}', applied_at)
ORDER BY name;
