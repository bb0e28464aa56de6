-- Stage funnel over time: for each calendar day from `start` to `end` (inclusive, days in time zone
-- `tz`, e.g. Asia/Shanghai), the users in each stage at the end of that day, and how many entered and
-- left the stage during the day. Built from stage_transitions alone (each user's first stage is a
-- transition from 'none'), so any past period can be drawn without daily snapshots; every stage gets
-- a row every day, also when nothing changed. An aggregate: no consent filter.
-- Parameters: start Date, end Date, tz String.
WITH
    deltas AS
    (
        SELECT day, stage, sum(entered) AS entered, sum(exited) AS exited
        FROM
        (
            SELECT toDate(at, {tz:String}) AS day, to_stage AS stage, 1 AS entered, 0 AS exited
            FROM stage_transitions FINAL
            UNION ALL
            SELECT toDate(at, {tz:String}) AS day, from_stage AS stage, 0 AS entered, 1 AS exited
            FROM stage_transitions FINAL
            WHERE from_stage != 'none'
            UNION ALL
            SELECT {start:Date} AS day, arrayJoin(['new', 'growing', 'mature', 'dormant', 'churned']) AS stage,
                0 AS entered, 0 AS exited
        )
        WHERE day <= {end:Date}
        GROUP BY day, stage
    ),
    days AS
    (
        SELECT toDate({start:Date} + number) AS day
        FROM numbers(toUInt64(greatest(0, dateDiff('day', {start:Date}, {end:Date}) + 1)))
    )
SELECT
    d.day AS day,
    x.stage AS stage,
    toInt64(sumIf(x.entered - x.exited, x.day <= d.day)) AS users,
    toInt64(sumIf(x.entered, x.day = d.day)) AS entered,
    toInt64(sumIf(x.exited, x.day = d.day)) AS exited
FROM days AS d
CROSS JOIN deltas AS x
GROUP BY day, stage
ORDER BY day, indexOf(['new', 'growing', 'mature', 'dormant', 'churned'], stage)
