-- FleetForge analytics, migration 0002: typed columns and views of the current event catalog.
-- Rendered by fleetforge.core.analytics.evolution.render_upgrade; every statement is safe to re-run.
-- Stop the sink while it runs: envelopes inserted between a view's DROP and CREATE are not parsed.

ALTER TABLE telemetry.run_events ADD COLUMN IF NOT EXISTS actor LowCardinality(String) AFTER error_kind;
ALTER TABLE telemetry.run_events ADD COLUMN IF NOT EXISTS breakpoint LowCardinality(String) AFTER actor;
ALTER TABLE telemetry.step_events ADD COLUMN IF NOT EXISTS wait_ms Float64 AFTER raw;
ALTER TABLE telemetry.step_events ADD COLUMN IF NOT EXISTS timeout_ms Int64 AFTER latency_ms;
ALTER TABLE telemetry.step_events ADD COLUMN IF NOT EXISTS actor LowCardinality(String) AFTER timeout_ms;
ALTER TABLE telemetry.step_events ADD COLUMN IF NOT EXISTS compensates LowCardinality(String) AFTER actor;
ALTER TABLE telemetry.envelopes_parsed ADD COLUMN IF NOT EXISTS actor LowCardinality(String) AFTER error_kind;
ALTER TABLE telemetry.envelopes_parsed ADD COLUMN IF NOT EXISTS breakpoint LowCardinality(String) AFTER actor;
ALTER TABLE telemetry.envelopes_parsed ADD COLUMN IF NOT EXISTS wait_ms Float64 AFTER raw;
ALTER TABLE telemetry.envelopes_parsed ADD COLUMN IF NOT EXISTS timeout_ms Int64 AFTER latency_ms;
ALTER TABLE telemetry.envelopes_parsed ADD COLUMN IF NOT EXISTS compensates LowCardinality(String) AFTER timeout_ms;

DROP VIEW IF EXISTS telemetry.envelopes_parse_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.envelopes_parse_mv TO telemetry.envelopes_parsed AS
WITH
    JSONExtract(envelope, 'Tuple(id String, kind String, schema_version Int64, occurred_at String, run_id String, step_id String, attempt Int64, workspace String, app String, trace Tuple(trace_id String, span_id String, traceparent String))') AS e,
    JSONExtractRaw(envelope, 'payload') AS payload_raw,
    JSONExtract(payload_raw, 'Tuple(status String, slo_tier String, steps Int64, budget_tokens Int64, budget_cost_usd Float64, labels String, queue_lag_ms Float64, duration_ms Float64, queue_target_ms Int64, error_kind String, actor String, breakpoint String, step_type String, priority_boost Int64, worker String, tokens Int64, cost_usd Float64, tool String, provider String, model String, input_tokens Int64, output_tokens Int64, cached_tokens Int64, recovered_after_ms Float64, error String, final Bool, next_attempt Int64, backoff_ms Float64, reason String, delay_ms Float64, pack String, hook String, effect String, raw String, wait_ms Float64, source String, tokens_limit Int64, cost_limit_usd Float64, tokens_remaining Int64, cost_remaining_usd Float64, tokens_projected_burn Int64, cost_projected_burn_usd Float64, budget_active Bool, tokens_reserved Int64, tokens_used Int64, cost_reserved_usd Float64, cost_used_usd Float64, ok Bool, latency_ms Float64, timeout_ms Int64, compensates String)') AS p,
    parseDateTime64BestEffortOrNull(e.occurred_at, 6, 'UTC') AS ts,
    ['actor', 'backoff_ms', 'breakpoint', 'budget_active', 'budget_cost_usd', 'budget_tokens', 'cached_tokens', 'compensates', 'cost_limit_usd', 'cost_projected_burn_usd', 'cost_remaining_usd', 'cost_reserved_usd', 'cost_usd', 'cost_used_usd', 'delay_ms', 'duration_ms', 'effect', 'error', 'error_kind', 'final', 'hook', 'input_tokens', 'labels', 'latency_ms', 'model', 'next_attempt', 'ok', 'output_tokens', 'pack', 'priority_boost', 'provider', 'queue_lag_ms', 'queue_target_ms', 'raw', 'reason', 'recovered_after_ms', 'slo_tier', 'source', 'status', 'step_type', 'steps', 'timeout_ms', 'tokens', 'tokens_limit', 'tokens_projected_burn', 'tokens_remaining', 'tokens_reserved', 'tokens_used', 'tool', 'wait_ms', 'worker'] AS typed_fields
SELECT
    event_id,
    e.kind AS kind,
    toUInt16(least(greatest(e.schema_version, 0), 65535)) AS schema_version,
    ifNull(ts, toDateTime64(0, 6, 'UTC')) AS occurred_at,
    e.run_id AS run_id,
    e.step_id AS step_id,
    toUInt32(least(greatest(e.attempt, 0), 4294967295)) AS attempt,
    e.workspace AS workspace,
    e.app AS app,
    e.trace.trace_id AS trace_id,
    e.trace.span_id AS span_id,
    e.trace.traceparent AS traceparent,
    p.status AS status,
    p.slo_tier AS slo_tier,
    p.steps AS steps,
    p.budget_tokens AS budget_tokens,
    if(isFinite(p.budget_cost_usd) AND abs(p.budget_cost_usd) < 1e12, CAST(toDecimal128(toInt64(round(p.budget_cost_usd * 1000000)), 6) / 1000000 AS Decimal(18, 6)), toDecimal64(0, 6)) AS budget_cost_usd,
    p.labels AS labels,
    if(isFinite(p.queue_lag_ms), p.queue_lag_ms, 0) AS queue_lag_ms,
    if(isFinite(p.duration_ms), p.duration_ms, 0) AS duration_ms,
    p.queue_target_ms AS queue_target_ms,
    p.error_kind AS error_kind,
    p.actor AS actor,
    p.breakpoint AS breakpoint,
    p.step_type AS step_type,
    p.priority_boost AS priority_boost,
    p.worker AS worker,
    p.tokens AS tokens,
    if(isFinite(p.cost_usd) AND abs(p.cost_usd) < 1e12, CAST(toDecimal128(toInt64(round(p.cost_usd * 1000000)), 6) / 1000000 AS Decimal(18, 6)), toDecimal64(0, 6)) AS cost_usd,
    p.tool AS tool,
    p.provider AS provider,
    p.model AS model,
    p.input_tokens AS input_tokens,
    p.output_tokens AS output_tokens,
    p.cached_tokens AS cached_tokens,
    if(isFinite(p.recovered_after_ms), p.recovered_after_ms, 0) AS recovered_after_ms,
    p.error AS error,
    p.final AS final,
    p.next_attempt AS next_attempt,
    if(isFinite(p.backoff_ms), p.backoff_ms, 0) AS backoff_ms,
    p.reason AS reason,
    if(isFinite(p.delay_ms), p.delay_ms, 0) AS delay_ms,
    p.pack AS pack,
    p.hook AS hook,
    p.effect AS effect,
    p.raw AS raw,
    if(isFinite(p.wait_ms), p.wait_ms, 0) AS wait_ms,
    p.source AS source,
    p.tokens_limit AS tokens_limit,
    if(isFinite(p.cost_limit_usd) AND abs(p.cost_limit_usd) < 1e12, CAST(toDecimal128(toInt64(round(p.cost_limit_usd * 1000000)), 6) / 1000000 AS Decimal(18, 6)), toDecimal64(0, 6)) AS cost_limit_usd,
    p.tokens_remaining AS tokens_remaining,
    if(isFinite(p.cost_remaining_usd) AND abs(p.cost_remaining_usd) < 1e12, CAST(toDecimal128(toInt64(round(p.cost_remaining_usd * 1000000)), 6) / 1000000 AS Decimal(18, 6)), toDecimal64(0, 6)) AS cost_remaining_usd,
    p.tokens_projected_burn AS tokens_projected_burn,
    if(isFinite(p.cost_projected_burn_usd) AND abs(p.cost_projected_burn_usd) < 1e12, CAST(toDecimal128(toInt64(round(p.cost_projected_burn_usd * 1000000)), 6) / 1000000 AS Decimal(18, 6)), toDecimal64(0, 6)) AS cost_projected_burn_usd,
    p.budget_active AS budget_active,
    p.tokens_reserved AS tokens_reserved,
    p.tokens_used AS tokens_used,
    if(isFinite(p.cost_reserved_usd) AND abs(p.cost_reserved_usd) < 1e12, CAST(toDecimal128(toInt64(round(p.cost_reserved_usd * 1000000)), 6) / 1000000 AS Decimal(18, 6)), toDecimal64(0, 6)) AS cost_reserved_usd,
    if(isFinite(p.cost_used_usd) AND abs(p.cost_used_usd) < 1e12, CAST(toDecimal128(toInt64(round(p.cost_used_usd * 1000000)), 6) / 1000000 AS Decimal(18, 6)), toDecimal64(0, 6)) AS cost_used_usd,
    p.ok AS ok,
    if(isFinite(p.latency_ms), p.latency_ms, 0) AS latency_ms,
    p.timeout_ms AS timeout_ms,
    p.compensates AS compensates,
    if(hasAll(typed_fields, JSONExtractKeys(payload_raw)), CAST(map() AS Map(LowCardinality(String), String)), CAST(arrayFilter(kv -> NOT has(typed_fields, kv.1), arrayMap(kv -> (kv.1, if(startsWith(kv.2, '"'), JSONExtractString(concat('[', kv.2, ']'), 1), kv.2)), JSONExtractKeysAndValuesRaw(payload_raw))) AS Map(LowCardinality(String), String))) AS attributes,
    payload_raw AS payload,
    multiIf(e.kind IN ('run_submitted', 'run_started', 'run_succeeded', 'run_failed', 'run_canceled', 'run_forked', 'run_paused', 'run_resumed'), 'run', e.kind IN ('step_queued', 'step_started', 'step_succeeded', 'step_failed', 'step_retry_scheduled', 'step_deferred', 'step_denied', 'step_skipped', 'policy_decision', 'budget_reserved', 'budget_reconciled', 'tool_call', 'step_reused', 'approval_requested', 'approval_granted', 'approval_denied', 'step_patched', 'compensation_queued'), 'step', '') AS scope,
    multiIf(e.id = '', if(isValidJSON(envelope), 'missing id', 'invalid JSON or invalid UTF-8'), e.id != event_id, 'envelope id differs from the delivered event id', e.schema_version != 1, 'unsupported schema_version', scope = '', 'unknown kind', isNull(ts), 'occurred_at is not an RFC 3339 timestamp', ts < toDateTime64('2000-01-01 00:00:00', 6, 'UTC') OR ts > now64(6, 'UTC') + INTERVAL 1 DAY, 'occurred_at is before 2000 or more than a day ahead', e.run_id = '', 'missing run_id', scope = 'step' AND e.step_id = '', 'missing step_id', '') AS reject_reason,
    envelope
FROM telemetry.envelopes_in;

DROP VIEW IF EXISTS telemetry.run_events_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.run_events_mv TO telemetry.run_events AS
SELECT event_id, kind, schema_version, occurred_at, run_id, attempt, workspace, app, trace_id, span_id, traceparent, status, slo_tier, steps, budget_tokens, budget_cost_usd, labels, queue_lag_ms, duration_ms, queue_target_ms, error_kind, actor, breakpoint, attributes, payload
FROM telemetry.envelopes_parsed
WHERE reject_reason = '' AND scope = 'run';

DROP VIEW IF EXISTS telemetry.step_events_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry.step_events_mv TO telemetry.step_events AS
SELECT event_id, kind, schema_version, occurred_at, run_id, step_id, attempt, workspace, app, trace_id, span_id, traceparent, step_type, slo_tier, queue_target_ms, priority_boost, queue_lag_ms, worker, tokens, cost_usd, duration_ms, tool, provider, model, input_tokens, output_tokens, cached_tokens, recovered_after_ms, error_kind, error, final, next_attempt, backoff_ms, reason, delay_ms, pack, hook, effect, raw, wait_ms, source, tokens_limit, cost_limit_usd, tokens_remaining, cost_remaining_usd, tokens_projected_burn, cost_projected_burn_usd, budget_active, tokens_reserved, tokens_used, cost_reserved_usd, cost_used_usd, ok, latency_ms, timeout_ms, actor, compensates, attributes, payload
FROM telemetry.envelopes_parsed
WHERE reject_reason = '' AND scope = 'step';
