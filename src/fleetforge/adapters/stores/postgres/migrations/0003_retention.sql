-- Retention: finished runs are found by the time they finished (see docs/retention.md).
-- A plain CREATE INDEX (migrations run in a transaction): on a large existing runs table it blocks
-- writes to runs while it builds, once, during the upgrade.
CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished_us, id) WHERE status IN ('succeeded', 'failed', 'canceled');
-- Retention deletes at the rate rows are written: vacuum these tables after 2 % of their rows
-- changed (default 20 %), so the space of deleted rows is reused soon and the tables stay flat.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
ALTER TABLE runs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
ALTER TABLE steps SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
ALTER TABLE step_deps SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
ALTER TABLE attempts SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
ALTER TABLE policy_decisions SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000);
