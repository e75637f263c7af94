-- Tool and http calls per tool and provider: failures, flake rate, most common error, p95 latency, and
-- how many of the calls agents made (agent_calls) and how many agent calls of the tool were denied.
-- Tools are shared across the fleet: this table is fleet-wide (the workspace/app filters do not apply).
SELECT tool, provider, calls, failures, flake_rate, top_error, p95_ms, agent_calls, agent_denied
FROM
(
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
) AS f
LEFT JOIN
(
    SELECT tool, sumIf(attempts, status != 'denied') AS agent_calls, sumIf(units, status = 'denied') AS agent_denied
    FROM telemetry.agent_activity
    WHERE $__timeFilter(bucket) AND unit = 'call'
    GROUP BY tool
) AS a USING (tool)
ORDER BY flake_rate DESC, calls DESC
