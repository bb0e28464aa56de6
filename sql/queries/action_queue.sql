-- Action queue: users whose current action is fresh and not yet exported, per action, oldest grant first.
-- An exporter (CRM, coupon system, WeCom task queue) reads a page, delivers the actions, then records what
-- it delivered:  INSERT INTO action_exports (user_id, action, action_at, exporter) VALUES (...)
-- and reads again; recorded grants are left out, so each grant is delivered once (at least once if the
-- exporter crashes between delivering and recording). A later grant of the same action to the same user
-- (after its cooldown) has a new action_at and queues again.
-- Fresh: granted within `max_age_hours` before the store's newest grant (event time, so replays of history
-- behave like the live stream): a stopped exporter does not flood users with stale actions when it returns.
-- Users who opted out (consent) are left out, and so is a grant made before its user refused marketing
-- (marketing_refused); the playbook grants marketing actions only to users with marketing consent, so a
-- newer grant to such a user is a service action (`marketing: false`) and queues.
-- Parameters: action String ('' = every action), max_age_hours UInt32, limit UInt64.
SELECT
    s.user_id AS user_id,
    s.action AS action,
    s.action_rule AS action_rule,
    assumeNotNull(s.action_at) AS action_at,
    s.stage AS stage,
    s.tier AS tier,
    s.at_risk AS at_risk,
    s.churn_risk AS churn_risk,
    s.purchase_propensity AS purchase_propensity,
    s.reasons AS reasons,
    s.playbook AS playbook,
    s.playbook_version AS playbook_version
FROM user_scores AS s FINAL
LEFT ANY JOIN marketing_refused AS r ON r.user_id = s.user_id
WHERE s.action != 'none'
  AND ({action:String} = '' OR s.action = {action:String})
  AND s.action_at >= (SELECT max(action_at) FROM user_scores) - toIntervalHour({max_age_hours:UInt32})
  AND (s.user_id, s.action, assumeNotNull(s.action_at)) NOT IN (SELECT user_id, action, action_at FROM action_exports)
  AND NOT (r.user_id != '' AND (r.opted_out OR r.updated_at >= s.action_at))
ORDER BY action_at, user_id
LIMIT {limit:UInt64}
