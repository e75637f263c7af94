-- A reader's own checkpoint beside its cursor (the telemetry reader's counter totals and histogram
-- buckets), written in the same transaction as the cursor so a takeover resumes exactly.
CREATE TABLE IF NOT EXISTS reader_state (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_us BIGINT NOT NULL
);
