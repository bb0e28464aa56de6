-- Cluster variant of sql/migrations/0006_taxonomies_and_actions.sql: the same columns on the _local tables
-- and on the Distributed tables over them; action_exports sharded by user like user_scores.

ALTER TABLE user_scores_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE user_scores_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE user_scores_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE user_scores_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE user_scores_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE user_scores_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE user_scores_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;
ALTER TABLE user_scores ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE user_scores ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE user_scores ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE user_scores ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE user_scores ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE user_scores ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE user_scores ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;

ALTER TABLE score_history_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE score_history_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE score_history_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE score_history_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE score_history_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE score_history_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE score_history_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;
ALTER TABLE score_history ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE score_history ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE score_history ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE score_history ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE score_history ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE score_history ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE score_history ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;

ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE stage_transitions_local ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE stage_transitions ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;

-- score_history is filled by a view with an explicit column list: recreate it with the new columns.
DROP VIEW IF EXISTS score_history_mv ON CLUSTER '{cluster}';
CREATE MATERIALIZED VIEW IF NOT EXISTS score_history_mv ON CLUSTER '{cluster}' TO score_history_local AS
SELECT
    user_id,
    fromUnixTimestamp64Milli(toInt64(version), 'UTC') AS at,
    stage,
    tier,
    at_risk,
    churn_risk,
    purchase_propensity,
    reasons,
    model_version,
    last_event_at,
    scored_at,
    version,
    taxonomy,
    taxonomy_version,
    playbook,
    playbook_version,
    action,
    action_rule,
    action_at
FROM user_scores_local
WHERE is_deleted = 0;

CREATE TABLE IF NOT EXISTS action_exports_local ON CLUSTER '{cluster}'
(
    user_id     String,
    action      LowCardinality(String),
    action_at   DateTime64(3, 'UTC'),
    exported_at DateTime64(3, 'UTC') DEFAULT now64(3),
    exporter    LowCardinality(String) DEFAULT ''
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/action_exports_local', '{replica}', exported_at)
ORDER BY (action, user_id, action_at)
TTL toDateTime(action_at) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS action_exports ON CLUSTER '{cluster}' AS action_exports_local
ENGINE = Distributed('{cluster}', currentDatabase(), action_exports_local, cityHash64(user_id));

ALTER TABLE consent ON CLUSTER '{cluster}' ADD COLUMN IF NOT EXISTS marketing Bool DEFAULT true;
