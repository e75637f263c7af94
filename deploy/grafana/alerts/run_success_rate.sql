-- Run success rate per workspace/app over the alert's range (terminal runs only); the rule fires
-- below the success SLO. Apps with fewer than 5 finished runs are left out (too few to judge).
SELECT workspace, app,
       sumIf(runs, status = 'succeeded') / sum(runs) AS success_rate
FROM telemetry.run_latency_metrics
WHERE $__timeFilter(bucket) AND status != ''
GROUP BY workspace, app
HAVING sum(runs) >= 5
