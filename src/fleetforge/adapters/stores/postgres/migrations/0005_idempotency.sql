-- Idempotent submit: a client's key names at most one run. The primary key is the unique constraint
-- that makes two submits with one key, even concurrent ones, store one run.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    created_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_run ON idempotency_keys (run_id);
