-- Where a run comes from when an operator made it from another one (`fleetforge runs fork`): the source
-- run, the step it was forked from, and who asked. Runs submitted from a spec have no row here.
CREATE TABLE IF NOT EXISTS run_origins (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    source_run TEXT NOT NULL,
    source_step TEXT NOT NULL,
    actor TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS run_origins_by_source ON run_origins (source_run);
