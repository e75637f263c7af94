-- Dashboard queries of the FleetForge Observability panels, each over a derived table (`*.derived`) and
-- the same answer computed from the raw tables (`*.raw`). Columns ending in _p95 are approximate
-- (t-digest) and compared with a tolerance; every other column must match exactly.

-- name: run_slo.derived
SELECT slo_tier, sum(runs) AS runs_total, sumIf(runs, status = 'succeeded') AS succeeded_total,
       sum(runs_within_target) AS within_target_total,
       round(sumIf(runs, status = 'succeeded') / sumIf(runs, status IN ('succeeded', 'failed')), 4) AS success_ratio,
       round(quantileTDigestMerge(0.95)(duration_ms_state)) AS duration_p95
FROM telemetry.run_latency_metrics WHERE status != '' GROUP BY slo_tier ORDER BY slo_tier;

-- name: run_slo.raw
SELECT slo_tier, count() AS runs_total, countIf(status = 'succeeded') AS succeeded_total,
       countIf(status = 'succeeded' AND duration_ms <= queue_target_ms) AS within_target_total,
       round(countIf(status = 'succeeded') / countIf(status IN ('succeeded', 'failed')), 4) AS success_ratio,
       round(quantileTDigest(0.95)(duration_ms)) AS duration_p95
FROM telemetry.run_events WHERE kind IN ('run_succeeded', 'run_failed', 'run_canceled')
GROUP BY slo_tier ORDER BY slo_tier;

-- name: mttr_hourly.derived
SELECT toStartOfHour(bucket) AS hour, sum(recoveries) AS recoveries_total,
       round(sum(recovery_ms_sum) / sum(recoveries), 3) AS mttr_ms
FROM telemetry.run_latency_metrics WHERE status = '' GROUP BY hour ORDER BY hour;

-- name: mttr_hourly.raw
SELECT toStartOfHour(toDateTime(occurred_at, 'UTC')) AS hour, count() AS recoveries_total,
       round(sum(recovered_after_ms) / count(), 3) AS mttr_ms
FROM telemetry.step_events WHERE kind = 'step_succeeded' AND recovered_after_ms > 0 GROUP BY hour ORDER BY hour;

-- name: retry_heatmap.derived
SELECT step_type, attempt, status, sum(steps) AS steps_total
FROM telemetry.step_retry_heatmap GROUP BY step_type, attempt, status ORDER BY step_type, attempt, status;

-- name: retry_heatmap.raw
SELECT step_type, attempt, multiIf(kind = 'step_succeeded', 'succeeded', kind = 'step_failed', 'failed', 'denied') AS status,
       count() AS steps_total
FROM telemetry.step_events WHERE kind IN ('step_succeeded', 'step_failed', 'step_denied')
GROUP BY step_type, attempt, status ORDER BY step_type, attempt, status;

-- name: budget_burndown.derived
SELECT workspace, app, toStartOfDay(bucket) AS day, sum(tokens_reserved) AS tokens_reserved_total,
       sum(tokens_used) AS tokens_used_total, sum(cost_reserved) AS cost_reserved_total, sum(cost_used) AS cost_used_total
FROM telemetry.budget_burndown GROUP BY workspace, app, day ORDER BY workspace, app, day;

-- name: budget_burndown.raw
SELECT workspace, app, toStartOfDay(toDateTime(occurred_at, 'UTC')) AS day,
       sumIf(tokens, kind = 'budget_reserved') AS tokens_reserved_total, sumIf(tokens_used, kind = 'budget_reconciled') AS tokens_used_total,
       sumIf(cost_usd, kind = 'budget_reserved') AS cost_reserved_total, sumIf(cost_used_usd, kind = 'budget_reconciled') AS cost_used_total
FROM telemetry.step_events WHERE kind IN ('budget_reserved', 'budget_reconciled')
GROUP BY workspace, app, day ORDER BY workspace, app, day;

-- name: policy_bursts.derived
SELECT toStartOfHour(bucket) AS hour, effect, sum(decisions) AS decisions_total
FROM telemetry.policy_decision_rates GROUP BY hour, effect ORDER BY hour, effect;

-- name: policy_bursts.raw
SELECT toStartOfHour(toDateTime(occurred_at, 'UTC')) AS hour, effect, count() AS decisions_total
FROM telemetry.step_events WHERE kind = 'policy_decision' GROUP BY hour, effect ORDER BY hour, effect;

-- name: tool_flakes.derived
SELECT tool, provider, sum(calls) AS calls_total, sum(failures) AS failures_total, round(sum(failures) / sum(calls), 4) AS flake_rate,
       round(quantileTDigestMerge(0.95)(latency_ms_state)) AS latency_p95
FROM telemetry.tool_error_taxonomy GROUP BY tool, provider ORDER BY tool, provider;

-- name: tool_flakes.raw
SELECT tool, provider, count() AS calls_total, countIf(NOT ok) AS failures_total, round(countIf(NOT ok) / count(), 4) AS flake_rate,
       round(quantileTDigest(0.95)(latency_ms)) AS latency_p95
FROM telemetry.step_events WHERE kind = 'tool_call' GROUP BY tool, provider ORDER BY tool, provider;
