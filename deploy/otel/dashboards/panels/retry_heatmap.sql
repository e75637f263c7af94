-- Terminal attempts by step type, outcome and attempt number. An agent's LLM turns and tool calls are
-- rows of their own ('agent turn', 'agent tool call'), taken out of the llm and tool rows.
SELECT step_type, status, attempt, sum(n) AS steps
FROM
(
    SELECT step_type, status, attempt, toInt64(sum(steps)) AS n
    FROM telemetry.step_retry_heatmap
    WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
    GROUP BY step_type, status, attempt
    UNION ALL
    SELECT if(unit = 'turn', 'llm', 'tool') AS step_type, status, attempt, -toInt64(sum(attempts)) AS n
    FROM telemetry.agent_activity
    WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
      AND unit != 'agent'
    GROUP BY step_type, status, attempt
    UNION ALL
    SELECT if(unit = 'turn', 'agent turn', 'agent tool call') AS step_type, status, attempt,
           toInt64(sum(attempts)) AS n
    FROM telemetry.agent_activity
    WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
      AND unit != 'agent'
    GROUP BY step_type, status, attempt
)
GROUP BY step_type, status, attempt
HAVING steps > 0
ORDER BY step_type, status, attempt
