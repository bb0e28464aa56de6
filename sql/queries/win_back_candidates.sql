-- Win-back candidates: users who are dormant (休眠期) or churned (流失期), have value (tier vip or
-- regular: they have bought before), and have neither opted out nor refused marketing (marketing_refused).
-- VIPs first, then the likeliest to buy again.
-- Parameters: none.
SELECT
    user_id,
    stage,
    tier,
    churn_risk,
    purchase_propensity,
    reasons,
    last_event_at
FROM user_scores FINAL
WHERE stage IN ('dormant', 'churned')
  AND tier IN ('vip', 'regular')
  AND user_id NOT IN (SELECT user_id FROM marketing_refused)
ORDER BY tier = 'vip' DESC, purchase_propensity DESC, user_id
