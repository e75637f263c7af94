-- Agent tool calls per tool by outcome: ok, failed (for good, after its retries) and denied (by a guardrail
-- such as tool_acl, or refused as invalid: answered to the model as a tool error), with the shares failed
-- and denied and the retried attempts.
SELECT
    tool,
    sumIf(units, status IN ('succeeded', 'failed', 'denied')) AS calls,
    sumIf(units, status = 'succeeded') AS ok,
    sumIf(units, status = 'failed') AS failed,
    sumIf(units, status = 'denied') AS denied,
    failed / nullIf(calls, 0) AS failure_rate,
    denied / nullIf(calls, 0) AS deny_rate,
    sumIf(attempts, attempt > 1) AS retries
FROM telemetry.agent_activity
WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
  AND unit = 'call'
GROUP BY tool
HAVING calls > 0
ORDER BY calls DESC, tool
