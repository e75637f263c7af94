-- Retention: finished runs are found by the time they finished (see docs/retention.md).
CREATE INDEX IF NOT EXISTS runs_finished ON runs (finished_us, id) WHERE status IN ('succeeded', 'failed', 'canceled');
