-- Headline numbers over the range: runs, success SLO, MTTR, attempts, tokens, cost, denies.
WITH
    (SELECT tuple(sumIf(runs, status != ''), sumIf(runs, status = 'succeeded'), sum(runs_within_target),
                  sum(recovery_ms_sum), sum(recoveries))
     FROM telemetry.run_latency_metrics
     WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})) AS r,
    (SELECT tuple(sum(steps), sumIf(steps, attempt > 1))
     FROM telemetry.step_retry_heatmap
     WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})) AS s,
    (SELECT tuple(sum(tokens_used), toFloat64(sum(cost_used)))
     FROM telemetry.budget_burndown
     WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})) AS b,
    (SELECT sumIf(decisions, effect = 'deny')
     FROM telemetry.policy_decision_rates
     WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})) AS d
SELECT
    r.1 AS runs,
    r.2 / nullIf(r.1, 0) AS success_rate,
    r.3 / nullIf(r.1, 0) AS slo_rate,
    r.4 / nullIf(r.5, 0) / 1000 AS mttr_s,
    s.1 AS attempts,
    s.2 AS retries,
    b.1 AS tokens_used,
    b.2 AS cost_used,
    d AS denies
