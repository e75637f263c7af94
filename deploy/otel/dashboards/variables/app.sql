-- Values of the dashboard's app variable (apps of the selected workspaces).
SELECT DISTINCT app FROM telemetry.run_events WHERE workspace IN (${workspace:singlequote}) ORDER BY app
