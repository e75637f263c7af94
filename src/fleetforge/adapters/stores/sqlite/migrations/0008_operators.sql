-- Operators in control (docs/runtime.md): the wait of a human approval decision, the steps waiting for
-- one by their deadline (not_before_us; 0 when the wait has no limit), paused runs counted as open.
ALTER TABLE policy_decisions ADD COLUMN wait_us INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS steps_waiting ON steps (not_before_us) WHERE status = 'waiting_approval';
DROP INDEX IF EXISTS runs_open;
CREATE INDEX runs_open ON runs (status) WHERE status IN ('queued', 'running', 'paused');
