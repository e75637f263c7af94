-- Terminal attempts by step type, outcome and attempt number.
SELECT step_type, status, attempt, sum(steps) AS steps
FROM telemetry.step_retry_heatmap
WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
GROUP BY step_type, status, attempt
ORDER BY step_type, status, attempt
