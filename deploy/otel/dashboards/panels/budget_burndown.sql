-- Cumulative tokens and cost used per workspace/app, with the tightest token limit seen and the
-- projected exhaustion time (linear extrapolation of the burn rate over the range).
SELECT
    t, workspace, app, tokens_used_cum, cost_used_cum, tokens_reserved_cum, tokens_limit,
    if(tokens_limit > 0 AND tokens_used_cum > 0 AND t > first_t AND tokens_used_cum < tokens_limit,
       toUInt64(t + (tokens_limit - tokens_used_cum) / (tokens_used_cum / (t - first_t + 60))), 0) AS exhaustion_t
FROM
(
    SELECT
        t, workspace, app,
        sum(tokens_used) OVER w AS tokens_used_cum,
        sum(cost_used) OVER w AS cost_used_cum,
        sum(tokens_reserved) OVER w AS tokens_reserved_cum,
        max(tokens_limit) OVER w AS tokens_limit,
        min(t) OVER w AS first_t
    FROM
    (
        SELECT toUnixTimestamp($__timeInterval(bucket)) AS t, workspace, app,
               sum(tokens_used) AS tokens_used, toFloat64(sum(cost_used)) AS cost_used,
               sum(tokens_reserved) AS tokens_reserved, max(tokens_limit) AS tokens_limit
        FROM telemetry.budget_burndown
        WHERE $__timeFilter(bucket) AND workspace IN (${workspace:singlequote}) AND app IN (${app:singlequote})
        GROUP BY t, workspace, app
    )
    WINDOW w AS (PARTITION BY workspace, app ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
ORDER BY workspace, app, t
