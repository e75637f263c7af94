-- Agent LLM turns per interval: turns that succeeded, turns that failed (for good, or were denied),
-- retried turn attempts, agent steps that finished, and the tokens the turns used.
SELECT
    toUnixTimestamp($__timeInterval(bucket)) AS t,
    sumIf(units, unit = 'turn' AND status = 'succeeded') AS turns_ok,
    sumIf(units, unit = 'turn' AND status IN ('failed', 'denied')) AS turns_failed,
    sumIf(attempts, unit = 'turn' AND attempt > 1) AS turn_retries,
    sumIf(units, unit = 'agent' AND status IN ('succeeded', 'failed', 'denied')) AS agents_finished,
    sumIf(tokens, unit = 'turn') AS turn_tokens
FROM telemetry.agent_activity
WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
GROUP BY t
ORDER BY t
