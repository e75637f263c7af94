-- Tool and http calls per tool and provider: failures, flake rate, most common error, p95 latency.
-- Tools are shared across the fleet: this table is fleet-wide (the workspace/app filters do not apply).
SELECT
    tool, provider,
    sum(kind_calls) AS calls,
    sum(kind_failures) AS failures,
    sum(kind_failures) / nullIf(sum(kind_calls), 0) AS flake_rate,
    argMaxIf(error_kind, (kind_failures, error_kind), error_kind != '') AS top_error,
    quantileTDigestMerge(0.95)(kind_latency) AS p95_ms
FROM
(
    SELECT tool, provider, error_kind, sum(calls) AS kind_calls, sum(failures) AS kind_failures,
           quantileTDigestMergeState(latency_ms_state) AS kind_latency
    FROM telemetry.tool_error_taxonomy
    WHERE $__timeFilter(bucket)
    GROUP BY tool, provider, error_kind
)
GROUP BY tool, provider
ORDER BY flake_rate DESC, calls DESC
