-- Values of the dashboard's workspace variable.
SELECT DISTINCT workspace FROM telemetry.run_events ORDER BY workspace
