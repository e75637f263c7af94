-- Synthetic FleetForge events for the dashboard-query benchmark, inserted through the real raw tables
-- (so the materialized views fill the derived tables as they would in production).
-- Parameters: {rows:UInt64} step events, {runs:UInt64} terminal run events, spread over 7 days before now.

-- name: step_events
INSERT INTO telemetry.step_events (event_id, kind, schema_version, occurred_at, run_id, step_id, attempt,
    workspace, app, trace_id, span_id, traceparent, step_type, slo_tier, queue_lag_ms, tokens, cost_usd,
    duration_ms, tool, provider, recovered_after_ms, error_kind, final, pack, hook, effect, tokens_used,
    cost_used_usd, tokens_limit, tokens_remaining, cost_remaining_usd, budget_active, ok, latency_ms, attributes,
    payload)
SELECT
    toString(generateUUIDv4(number)) AS event_id,
    multiIf(r < 12, 'step_queued', r < 24, 'step_started', r < 34, 'budget_reserved', r < 44, 'budget_reconciled',
            r < 62, 'policy_decision', r < 72, 'step_succeeded', r < 76, 'step_failed', r < 79, 'step_retry_scheduled',
            r < 80, 'step_denied', r < 96, 'tool_call', 'step_deferred') AS kind,
    1,
    now64(6, 'UTC') - toIntervalMicrosecond(intHash64(number * 7) % 604800000000) AS occurred_at,
    concat('run-', toString(intDiv(number, 15))) AS run_id,
    concat('s', toString(number % 5)) AS step_id,
    toUInt32(1 + (intHash32(number) % 100 < 85 ? 0 : (intHash32(number) % 3))) AS attempt,
    ['acme', 'globex', 'initech', 'umbrella', 'hooli'][1 + number % 5] AS workspace,
    ['support', 'research', 'billing', 'ops'][1 + intHash32(number * 3) % 4] AS app,
    hex(intHash64(number)), hex(intHash32(number)), '',
    ['llm', 'tool', 'http'][1 + intHash32(number * 5) % 3] AS step_type,
    ['gold', 'standard', 'batch'][1 + intHash32(number * 11) % 3] AS slo_tier,
    (intHash32(number * 13) % 5000) / 10. AS queue_lag_ms,
    toInt64(intHash32(number * 17) % 2000) AS tokens,
    toDecimal64(intHash32(number * 19) % 5000, 6) / 1000000 AS cost_usd,
    (intHash32(number * 23) % 200000) / 10. AS duration_ms,
    ['search', 'weather', 'crm_lookup', 'calculator', 'noop', 'api.example.com', 'sim-small', 'gpt-4o'][1 + intHash32(number * 29) % 8] AS tool,
    ['python', 'http', 'sim', 'openai'][1 + intHash32(number * 31) % 4] AS provider,
    if(kind = 'step_succeeded' AND intHash32(number) % 10 = 0, (intHash32(number * 37) % 60000) / 10., 0) AS recovered_after_ms,
    multiIf(kind IN ('step_failed', 'step_retry_scheduled') OR (kind = 'tool_call' AND intHash32(number * 41) % 10 = 0),
            ['timeout', 'rate_limited', 'http_5xx', 'http_4xx', 'crash'][1 + intHash32(number * 43) % 5],
            kind = 'step_denied', ['budget_exceeded', 'policy_denied'][1 + intHash32(number) % 2], '') AS error_kind,
    kind = 'step_failed' AND intHash32(number * 47) % 3 = 0 AS final,
    ['prompt_injection', 'pii_redaction', 'tool_acl', 'budget_caps'][1 + intHash32(number * 53) % 4] AS pack,
    ['pre', 'post'][1 + intHash32(number * 59) % 2] AS hook,
    ['allow', 'allow', 'allow', 'allow', 'deny', 'modify'][1 + intHash32(number * 61) % 6] AS effect,
    toInt64(intHash32(number * 67) % 1500) AS tokens_used,
    toDecimal64(intHash32(number * 71) % 4000, 6) / 1000000 AS cost_used_usd,
    toInt64(if(number % 4 = 0, 100000, 0)) AS tokens_limit,
    toInt64(if(number % 4 = 0, 100000 - intHash32(number) % 100000, 0)) AS tokens_remaining,
    toDecimal64(0, 6) AS cost_remaining_usd,
    number % 4 = 0 AS budget_active,
    error_kind = '' AS ok,
    (intHash32(number * 73) % 30000) / 10. AS latency_ms,
    if(step_type != 'http' AND number % 5 = 0, map('agent', 'agent'), map()) AS attributes,  -- a fifth: agent units
    '{}' AS payload
FROM (SELECT number, intHash32(number * 101) % 100 AS r FROM numbers({rows:UInt64}));

-- name: run_events
INSERT INTO telemetry.run_events (event_id, kind, schema_version, occurred_at, run_id, workspace, app,
    status, slo_tier, duration_ms, queue_target_ms, error_kind, payload)
SELECT
    toString(generateUUIDv4(number + 1000000000)) AS event_id,
    multiIf(r < 70, 'run_succeeded', r < 95, 'run_failed', 'run_canceled') AS kind,
    1,
    now64(6, 'UTC') - toIntervalMicrosecond(intHash64(number * 7 + 1) % 604800000000) AS occurred_at,
    concat('run-', toString(number)) AS run_id,
    ['acme', 'globex', 'initech', 'umbrella', 'hooli'][1 + number % 5] AS workspace,
    ['support', 'research', 'billing', 'ops'][1 + intHash32(number * 3) % 4] AS app,
    replaceOne(kind, 'run_', '') AS status,
    ['gold', 'standard', 'batch'][1 + intHash32(number * 11) % 3] AS slo_tier,
    (intHash32(number * 23) % 600000) / 10. AS duration_ms,
    [1000, 5000, 30000][1 + intHash32(number * 11) % 3] AS queue_target_ms,
    if(kind = 'run_failed', 'timeout', '') AS error_kind,
    '{}' AS payload
FROM (SELECT number, intHash32(number * 103) % 100 AS r FROM numbers({runs:UInt64}));
