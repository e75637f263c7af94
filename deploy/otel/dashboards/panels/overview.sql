-- Headline numbers over the range: runs, success SLO, MTTR, attempts, tokens, cost, denies.
SELECT
    (SELECT sum(runs) FROM telemetry.run_latency_metrics
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        AND status != '') AS runs,
    (SELECT sumIf(runs, status = 'succeeded') / nullIf(sum(runs), 0) FROM telemetry.run_latency_metrics
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        AND status != '') AS success_rate,
    (SELECT sum(runs_within_target) / nullIf(sum(runs), 0) FROM telemetry.run_latency_metrics
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        AND status != '') AS slo_rate,
    (SELECT sum(recovery_ms_sum) / nullIf(sum(recoveries), 0) / 1000 FROM telemetry.run_latency_metrics
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote}))
      AS mttr_s,
    (SELECT sum(steps) FROM telemetry.step_retry_heatmap
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote}))
      AS attempts,
    (SELECT sumIf(steps, attempt > 1) FROM telemetry.step_retry_heatmap
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote}))
      AS retries,
    (SELECT sum(tokens_used) FROM telemetry.budget_burndown
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote}))
      AS tokens_used,
    (SELECT toFloat64(sum(cost_used)) FROM telemetry.budget_burndown
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote}))
      AS cost_used,
    (SELECT sumIf(decisions, effect = 'deny') FROM telemetry.policy_decision_rates
      WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote}))
      AS denies
