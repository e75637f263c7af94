-- Guardrail denies in the last 5 minutes against the average 5 minutes of the rest of the alert's
-- range, per workspace/app: the surge ratio (0 while fewer than 5 recent denies).
SELECT workspace, app,
       if(recent >= 5, recent / greatest(1, earlier / greatest(1, (dateDiff('second', $__fromTime, $__toTime) - 300) / 300)), 0)
           AS deny_surge_ratio
FROM
(
    SELECT workspace, app,
           sumIf(decisions, bucket >= $__toTime - INTERVAL 5 MINUTE) AS recent,
           sumIf(decisions, bucket < $__toTime - INTERVAL 5 MINUTE) AS earlier
    FROM telemetry.policy_decision_rates
    WHERE $__timeFilter(bucket) AND effect = 'deny'
    GROUP BY workspace, app
)
