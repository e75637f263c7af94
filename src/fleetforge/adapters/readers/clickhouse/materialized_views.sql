-- FleetForge analytics: the six derived tables and the materialized views that maintain them.
--
-- Builds on the raw tables telemetry.run_events and telemetry.step_events (migration 0001, applied
-- by `fleetforge analytics apply`). Apply with
--     clickhouse-client --multiquery < deploy/clickhouse/materialized_views.sql
-- or `fleetforge analytics apply`, which runs this same file. Every statement is idempotent.
-- Views only see new inserts: `fleetforge analytics backfill` re-derives the tables from the raw
-- ones with the SELECT of each view below.
--
-- Conventions: `bucket` is the event minute (UTC). Counts and sums are SimpleAggregateFunction
-- columns, queryable with plain sum(col) (max(col) for the *_limit and *_max columns). Quantiles and
-- latest values are -State columns named *_state: read them with quantileTDigestMerge(0.95)(col)
-- or argMaxMerge(col). Costs are exact Decimal micro-USD.

CREATE DATABASE IF NOT EXISTS telemetry;

-- run_latency_metrics: runs by terminal status, duration quantiles and histogram, success SLO and
-- MTTR. Rows with runs > 0 come from terminal run events. Rows with an empty status come from step
-- recoveries (a step_succeeded after an earlier failed attempt) and carry only the MTTR columns.
CREATE TABLE IF NOT EXISTS telemetry.run_latency_metrics
(
    bucket DateTime('UTC'),
    workspace LowCardinality(String),
    app LowCardinality(String),
    slo_tier LowCardinality(String),
    status LowCardinality(String),
    runs SimpleAggregateFunction(sum, UInt64),
    runs_within_target SimpleAggregateFunction(sum, UInt64),
    target_ms_max SimpleAggregateFunction(max, Int64),
    duration_ms_sum SimpleAggregateFunction(sum, Float64),
    duration_ms_max SimpleAggregateFunction(max, Float64),
    duration_ms_state AggregateFunction(quantileTDigest, Float64),
    le_100ms SimpleAggregateFunction(sum, UInt64),
    le_250ms SimpleAggregateFunction(sum, UInt64),
    le_500ms SimpleAggregateFunction(sum, UInt64),
    le_1s SimpleAggregateFunction(sum, UInt64),
    le_2500ms SimpleAggregateFunction(sum, UInt64),
    le_5s SimpleAggregateFunction(sum, UInt64),
    le_10s SimpleAggregateFunction(sum, UInt64),
    le_30s SimpleAggregateFunction(sum, UInt64),
    le_60s SimpleAggregateFunction(sum, UInt64),
    le_300s SimpleAggregateFunction(sum, UInt64),
    recoveries SimpleAggregateFunction(sum, UInt64),
    recovery_ms_sum SimpleAggregateFunction(sum, Float64),
    recovery_ms_state AggregateFunction(quantileTDigest, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, workspace, app, slo_tier, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.run_latency_metrics_mv TO telemetry.run_latency_metrics AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    workspace,
    app,
    slo_tier,
    status,
    count() AS runs,
    countIf(status = 'succeeded' AND duration_ms <= queue_target_ms) AS runs_within_target,
    max(queue_target_ms) AS target_ms_max,
    sum(duration_ms) AS duration_ms_sum,
    max(duration_ms) AS duration_ms_max,
    quantileTDigestState(duration_ms) AS duration_ms_state,
    countIf(duration_ms <= 100) AS le_100ms,
    countIf(duration_ms <= 250) AS le_250ms,
    countIf(duration_ms <= 500) AS le_500ms,
    countIf(duration_ms <= 1000) AS le_1s,
    countIf(duration_ms <= 2500) AS le_2500ms,
    countIf(duration_ms <= 5000) AS le_5s,
    countIf(duration_ms <= 10000) AS le_10s,
    countIf(duration_ms <= 30000) AS le_30s,
    countIf(duration_ms <= 60000) AS le_60s,
    countIf(duration_ms <= 300000) AS le_300s
FROM telemetry.run_events
WHERE kind IN ('run_succeeded', 'run_failed', 'run_canceled')
GROUP BY bucket, workspace, app, slo_tier, status;

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.run_latency_recovery_mv TO telemetry.run_latency_metrics AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    workspace,
    app,
    slo_tier,
    '' AS status,
    count() AS recoveries,
    sum(recovered_after_ms) AS recovery_ms_sum,
    quantileTDigestState(recovered_after_ms) AS recovery_ms_state
FROM telemetry.step_events
WHERE kind = 'step_succeeded' AND recovered_after_ms > 0
GROUP BY bucket, workspace, app, slo_tier;

-- step_retry_heatmap: terminal attempts by step type, outcome and attempt number.
CREATE TABLE IF NOT EXISTS telemetry.step_retry_heatmap
(
    bucket DateTime('UTC'),
    workspace LowCardinality(String),
    app LowCardinality(String),
    step_type LowCardinality(String),
    status LowCardinality(String),
    attempt UInt32,
    steps SimpleAggregateFunction(sum, UInt64),
    final_failures SimpleAggregateFunction(sum, UInt64),
    duration_ms_sum SimpleAggregateFunction(sum, Float64),
    duration_ms_state AggregateFunction(quantileTDigest, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, step_type, status, attempt, workspace, app);

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.step_retry_heatmap_mv TO telemetry.step_retry_heatmap AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    workspace,
    app,
    step_type,
    multiIf(kind = 'step_succeeded', 'succeeded', kind = 'step_failed', 'failed', 'denied') AS status,
    attempt,
    count() AS steps,
    countIf(kind = 'step_failed' AND final) AS final_failures,
    sum(duration_ms) AS duration_ms_sum,
    quantileTDigestStateIf(duration_ms, kind != 'step_denied') AS duration_ms_state
FROM telemetry.step_events
WHERE kind IN ('step_succeeded', 'step_failed', 'step_denied')
GROUP BY bucket, workspace, app, step_type, status, attempt;

-- budget_burndown: tokens and cost reserved (budget_reserved) and used (budget_reconciled) per
-- workspace/app, with the tightest limit seen and the latest remaining headroom of budgeted steps.
CREATE TABLE IF NOT EXISTS telemetry.budget_burndown
(
    bucket DateTime('UTC'),
    workspace LowCardinality(String),
    app LowCardinality(String),
    tokens_reserved SimpleAggregateFunction(sum, Int64),
    tokens_used SimpleAggregateFunction(sum, Int64),
    cost_reserved SimpleAggregateFunction(sum, Decimal(38, 6)),
    cost_used SimpleAggregateFunction(sum, Decimal(38, 6)),
    reservations SimpleAggregateFunction(sum, UInt64),
    reconciliations SimpleAggregateFunction(sum, UInt64),
    tokens_limit SimpleAggregateFunction(max, Int64),
    cost_limit SimpleAggregateFunction(max, Decimal(18, 6)),
    tokens_remaining_state AggregateFunction(argMax, Int64, DateTime64(6, 'UTC')),
    cost_remaining_state AggregateFunction(argMax, Decimal(18, 6), DateTime64(6, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, workspace, app);

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.budget_burndown_mv TO telemetry.budget_burndown AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    workspace,
    app,
    sumIf(tokens, kind = 'budget_reserved') AS tokens_reserved,
    sumIf(tokens_used, kind = 'budget_reconciled') AS tokens_used,
    sumIf(cost_usd, kind = 'budget_reserved') AS cost_reserved,
    sumIf(cost_used_usd, kind = 'budget_reconciled') AS cost_used,
    countIf(kind = 'budget_reserved') AS reservations,
    countIf(kind = 'budget_reconciled') AS reconciliations,
    max(tokens_limit) AS tokens_limit,
    max(cost_limit_usd) AS cost_limit,
    argMaxStateIf(tokens_remaining, occurred_at, budget_active) AS tokens_remaining_state,
    argMaxStateIf(cost_remaining_usd, occurred_at, budget_active) AS cost_remaining_state
FROM telemetry.step_events
WHERE kind IN ('budget_reserved', 'budget_reconciled')
GROUP BY bucket, workspace, app;

-- policy_decision_rates: guardrail evaluations by pack, hook and effect (allow | deny | modify), with the
-- time people took to answer (pack human_approval: request to approval, denial or timeout; 0 for other packs).
CREATE TABLE IF NOT EXISTS telemetry.policy_decision_rates
(
    bucket DateTime('UTC'),
    workspace LowCardinality(String),
    app LowCardinality(String),
    pack LowCardinality(String),
    hook LowCardinality(String),
    effect LowCardinality(String),
    step_type LowCardinality(String),
    decisions SimpleAggregateFunction(sum, UInt64),
    wait_ms_sum SimpleAggregateFunction(sum, Float64),
    wait_ms_max SimpleAggregateFunction(max, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, workspace, app, pack, hook, effect, step_type);

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.policy_decision_rates_mv TO telemetry.policy_decision_rates AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    workspace,
    app,
    pack,
    hook,
    effect,
    step_type,
    count() AS decisions,
    sum(wait_ms) AS wait_ms_sum,
    max(wait_ms) AS wait_ms_max
FROM telemetry.step_events
WHERE kind = 'policy_decision'
GROUP BY bucket, workspace, app, pack, hook, effect, step_type;

-- tool_error_taxonomy: tool and http calls by tool, provider and error kind (empty on success), fleet-wide.
CREATE TABLE IF NOT EXISTS telemetry.tool_error_taxonomy
(
    bucket DateTime('UTC'),
    tool LowCardinality(String),
    provider LowCardinality(String),
    error_kind LowCardinality(String),
    calls SimpleAggregateFunction(sum, UInt64),
    failures SimpleAggregateFunction(sum, UInt64),
    latency_ms_sum SimpleAggregateFunction(sum, Float64),
    latency_ms_state AggregateFunction(quantileTDigest, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, tool, provider, error_kind);

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.tool_error_taxonomy_mv TO telemetry.tool_error_taxonomy AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    tool,
    provider,
    error_kind,
    count() AS calls,
    countIf(NOT ok) AS failures,
    sum(latency_ms) AS latency_ms_sum,
    quantileTDigestState(latency_ms) AS latency_ms_state
FROM telemetry.step_events
WHERE kind = 'tool_call'
GROUP BY bucket, tool, provider, error_kind;

-- agent_activity: agent steps (unit 'agent') and the units they grew: LLM turns ('turn') and tool calls
-- ('call', with the tool the model asked for), from their terminal events. A row's status is how the
-- event ended the attempt or the step: succeeded | failed | denied | skipped | canceled. `units` counts
-- steps at their end (a success, a failure with no retry after it, a denial, a skip), so sum(units) by
-- status equals the `agents` part of `fleetforge demo --json`; `attempts` counts terminal attempts (the
-- rows of step_retry_heatmap that are agent units), by attempt number.
CREATE TABLE IF NOT EXISTS telemetry.agent_activity
(
    bucket DateTime('UTC'),
    workspace LowCardinality(String),
    app LowCardinality(String),
    unit LowCardinality(String),
    tool LowCardinality(String),
    status LowCardinality(String),
    attempt UInt32,
    units SimpleAggregateFunction(sum, UInt64),
    attempts SimpleAggregateFunction(sum, UInt64),
    tokens SimpleAggregateFunction(sum, Int64),
    cost_usd SimpleAggregateFunction(sum, Decimal(38, 6)),
    duration_ms_sum SimpleAggregateFunction(sum, Float64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (bucket, unit, status, tool, attempt, workspace, app);

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.agent_activity_mv TO telemetry.agent_activity AS
SELECT
    toDateTime(toStartOfMinute(occurred_at), 'UTC') AS bucket,
    workspace,
    app,
    multiIf(step_type = 'agent', 'agent', step_type = 'llm', 'turn', 'call') AS unit,
    if(step_type = 'agent' OR step_type = 'llm', '', step_events.tool) AS tool,
    multiIf(kind = 'step_succeeded', 'succeeded', kind = 'step_failed', 'failed', kind = 'step_denied', 'denied',
            reason = 'run canceled', 'canceled', 'skipped') AS status,
    attempt,
    countIf(kind != 'step_failed' OR final) AS units,
    countIf(kind != 'step_skipped') AS attempts,
    sum(tokens) AS tokens,
    sum(cost_usd) AS cost_usd,
    sum(duration_ms) AS duration_ms_sum
FROM telemetry.step_events
WHERE kind IN ('step_succeeded', 'step_failed', 'step_denied', 'step_skipped')
  AND (step_type = 'agent' OR attributes['agent'] != '')
GROUP BY bucket, workspace, app, unit, tool, status, attempt;
