-- Stage taxonomies, playbooks and next-best actions (docs/playbooks.md). Columns are documented in
-- docs/schema.md. Idempotent: ADD COLUMN IF NOT EXISTS, CREATE ... IF NOT EXISTS; the view is dropped and
-- created again with the new columns (run it before the pipeline starts writing: `lifecycle run` does).

-- Every score and transition names the taxonomy (and version) that labelled it, the playbook that chose
-- its action, and the user's current action: what, by which rule, since when (NULL: no action yet).
-- Rows written before this migration read as the default taxonomy, with no action.

ALTER TABLE user_scores ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE user_scores ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE user_scores ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE user_scores ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE user_scores ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE user_scores ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE user_scores ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;

ALTER TABLE score_history ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE score_history ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE score_history ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE score_history ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE score_history ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE score_history ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE score_history ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;

ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS taxonomy LowCardinality(String) DEFAULT 'lifecycle-5';
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS taxonomy_version UInt32 DEFAULT 1;
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS playbook LowCardinality(String) DEFAULT '';
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS playbook_version UInt32 DEFAULT 0;
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS action LowCardinality(String) DEFAULT 'none';
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS action_rule LowCardinality(String) DEFAULT '';
ALTER TABLE stage_transitions ADD COLUMN IF NOT EXISTS action_at Nullable(DateTime64(3, 'UTC')) DEFAULT NULL;

-- score_history is filled by a view with an explicit column list: recreate it with the new columns.
DROP VIEW IF EXISTS score_history_mv;
CREATE MATERIALIZED VIEW IF NOT EXISTS score_history_mv TO score_history AS
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
FROM user_scores
WHERE is_deleted = 0;

-- What an exporter (CRM, coupon system, WeCom task queue) has taken from the action queue
-- (sql/queries/action_queue.sql): one row per (action, user, action_at) exported. The queue leaves these
-- out, so an action is delivered once per grant even when the exporter runs again.
CREATE TABLE IF NOT EXISTS action_exports
(
    user_id     String,
    action      LowCardinality(String),
    action_at   DateTime64(3, 'UTC'),
    exported_at DateTime64(3, 'UTC') DEFAULT now64(3),
    exporter    LowCardinality(String) DEFAULT ''
)
ENGINE = ReplacingMergeTree(exported_at)
ORDER BY (action, user_id, action_at)
TTL toDateTime(action_at) + INTERVAL 400 DAY;

-- Marketing consent (PIPL): a user may accept being scored but refuse marketing. Playbook rules read it as
-- `marketing_consent`; the shipped playbooks give such users service actions only. Default: consent.
ALTER TABLE consent ADD COLUMN IF NOT EXISTS marketing Bool DEFAULT true;
