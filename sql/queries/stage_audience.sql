-- Current stage audience: every user whose latest score puts them in one stage, for that stage's
-- playbook (welcome for new, nurture for growing, VIP care for mature, reactivation for dormant, ...).
-- Users who opted out or refused marketing (the marketing_refused view) are left out.
-- Parameters: stage String, one of new, growing, mature, dormant, churned.
SELECT
    user_id,
    stage,
    tier,
    at_risk,
    churn_risk,
    purchase_propensity,
    reasons,
    last_event_at,
    model_version
FROM user_scores FINAL
WHERE stage = {stage:String}
  AND user_id NOT IN (SELECT user_id FROM marketing_refused)
ORDER BY churn_risk DESC, user_id
