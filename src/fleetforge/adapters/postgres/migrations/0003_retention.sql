-- Retention: finished runs are found by the time they finished (see docs/retention.md).
-- A plain CREATE INDEX (migrations run in a transaction): on a large existing runs table it blocks
-- writes to runs while it builds, once, during the upgrade.
CREATE INDEX runs_finished ON runs (finished_us, id) WHERE status IN ('succeeded', 'failed', 'canceled');
