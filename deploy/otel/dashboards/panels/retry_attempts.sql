-- Terminal attempts per interval by attempt number (the Grafana retry heatmap over time): one column
-- per attempt, 4 and later together.
SELECT
    toUnixTimestamp($__timeInterval(bucket)) AS t,
    sumIf(steps, attempt = 1) AS attempt_1,
    sumIf(steps, attempt = 2) AS attempt_2,
    sumIf(steps, attempt = 3) AS attempt_3,
    sumIf(steps, attempt >= 4) AS attempt_4_plus
FROM telemetry.step_retry_heatmap
WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
GROUP BY t
ORDER BY t
