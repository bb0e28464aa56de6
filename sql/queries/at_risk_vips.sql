-- At-risk VIPs (预流失): VIP-tier users still in an active stage whose churn risk crossed the at-risk
-- threshold, with the reasons to act on (1:1 VIP care before they go dormant). Users who opted out
-- of automated marketing are left out. Highest risk first.
-- Parameters: none.
SELECT
    user_id,
    stage,
    churn_risk,
    purchase_propensity,
    reasons,
    last_event_at
FROM user_scores FINAL
WHERE at_risk
  AND tier = 'vip'
  AND user_id NOT IN (SELECT user_id FROM consent FINAL WHERE opted_out)
ORDER BY churn_risk DESC, user_id
