-- Where a run comes from when an operator made it from another one (`fleetforge runs fork`): the source
-- run, the step it was forked from, and who asked. Runs submitted from a spec have no row here.
CREATE TABLE IF NOT EXISTS run_origins (
    run_id text PRIMARY KEY,
    kind text NOT NULL,
    source_run text NOT NULL,
    source_step text NOT NULL,
    actor text NOT NULL,
    created_us bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS run_origins_by_source ON run_origins (source_run);
