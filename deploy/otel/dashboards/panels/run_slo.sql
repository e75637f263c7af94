-- Run success SLO (share of runs succeeded; share succeeded within their tier's target), MTTR
-- (mean time from a step's first failure to its recovery) and run duration quantiles, per interval.
SELECT
    toUnixTimestamp($__timeInterval(bucket)) AS t,
    sumIf(runs, status != '') AS runs_total,
    sumIf(runs, status = 'succeeded') AS runs_succeeded,
    sumIf(runs, status = 'succeeded') / nullIf(sumIf(runs, status != ''), 0) AS success_rate,
    sum(runs_within_target) / nullIf(sumIf(runs, status != ''), 0) AS slo_rate,
    sum(recovery_ms_sum) / nullIf(sum(recoveries), 0) / 1000 AS mttr_s,
    quantileTDigestMergeIf(0.5)(duration_ms_state, status != '') / 1000 AS p50_s,
    quantileTDigestMergeIf(0.95)(duration_ms_state, status != '') / 1000 AS p95_s
FROM telemetry.run_latency_metrics
WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
GROUP BY t
ORDER BY t
