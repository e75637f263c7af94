-- Guardrail decisions per interval by effect (allow | modify | deny): deny bursts stand out.
SELECT toUnixTimestamp($__timeInterval(bucket)) AS t, effect, sum(decisions) AS decisions
FROM telemetry.policy_decision_rates
WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
GROUP BY t, effect
ORDER BY t, effect
