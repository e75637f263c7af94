-- Tool and http call failure (flake) rate per tool and provider over the alert's range; the rule
-- fires above the flake-rate SLO. Tools with fewer than 20 calls are left out.
SELECT tool, provider, sum(failures) / sum(calls) AS flake_rate
FROM telemetry.tool_error_taxonomy
WHERE $__timeFilter(bucket)
GROUP BY tool, provider
HAVING sum(calls) >= 20
