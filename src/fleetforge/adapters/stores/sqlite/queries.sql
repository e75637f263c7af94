-- Named queries of the SQLite store. Parameters are positional (?).

-- name: insert_run
INSERT INTO runs (id, workspace, app, status, spec, seed, slo_tier, queue_target_ms, trace_id,
                  created_us, started_us, finished_us, error_kind, labels, outputs)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: update_run
UPDATE runs SET status = ?, started_us = ?, finished_us = ?, error_kind = ?,
                outputs = COALESCE(?, outputs) WHERE id = ?;

-- name: select_run
SELECT id, workspace, app, status, spec, seed, slo_tier, queue_target_ms, trace_id,
       created_us, started_us, finished_us, error_kind, labels, outputs
FROM runs WHERE id = ?;

-- name: select_run_state
SELECT status, started_us, finished_us, error_kind FROM runs WHERE id = ?;

-- name: list_runs
SELECT id, workspace, app, status, spec, seed, slo_tier, queue_target_ms, trace_id,
       created_us, started_us, finished_us, error_kind, labels, outputs
FROM runs
WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR workspace = ?2)
ORDER BY created_us DESC LIMIT ?3;

-- name: claim_idempotency_key
INSERT INTO idempotency_keys (key, run_id, created_us) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING;

-- name: select_idempotency_key
SELECT run_id FROM idempotency_keys WHERE key = ?;

-- name: insert_token
INSERT INTO api_tokens (id, name, scope, digest, created_us, revoked_us) VALUES (?, ?, ?, ?, ?, ?);

-- name: list_tokens
SELECT id, name, scope, digest, created_us, revoked_us FROM api_tokens ORDER BY created_us, id;

-- name: token_by_digest
SELECT id, name, scope, digest, created_us, revoked_us FROM api_tokens WHERE digest = ?;

-- name: revoke_token
UPDATE api_tokens SET revoked_us = ?2 WHERE id = ?1 AND revoked_us IS NULL;

-- name: find_run_ids
-- A range scan of the primary key (BINARY collation), then an exact prefix check.
SELECT id FROM runs WHERE id >= ?1 AND id < ?2 AND substr(id, 1, length(?1)) = ?1
ORDER BY id LIMIT ?3;

-- name: count_open_runs
SELECT count(*) FROM runs WHERE status IN ('queued', 'running', 'paused');

-- name: insert_step
INSERT INTO steps (run_id, step_id, type, status, spec, attempt, max_attempts, deps_remaining, due_us,
                   ready_us, not_before_us, queue_target_ms, priority_boost, slo_tier, lease_owner,
                   lease_expires_us, started_us, finished_us, first_failure_us, error_kind, output)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_dep
INSERT INTO step_deps (run_id, step_id, depends_on) VALUES (?, ?, ?);

-- name: update_step
UPDATE steps SET status = ?, attempt = ?, deps_remaining = ?, due_us = ?, ready_us = ?,
                 not_before_us = ?, lease_owner = ?, lease_expires_us = ?, started_us = ?,
                 finished_us = ?, first_failure_us = ?, error_kind = ?, output = ?, spec = ?
WHERE run_id = ? AND step_id = ?;

-- name: select_steps_of_run
SELECT * FROM steps WHERE run_id = ? ORDER BY rowid;

-- name: select_step
SELECT * FROM steps WHERE run_id = ? AND step_id = ?;

-- name: ready_steps
SELECT * FROM steps
WHERE status = 'queued' AND not_before_us <= ?
ORDER BY due_us LIMIT ?;

-- name: expired_approvals
-- Steps waiting for a person past their approval deadline (not_before_us; 0 when the wait has no limit).
SELECT * FROM steps
WHERE status = 'waiting_approval' AND not_before_us > 0 AND not_before_us <= ?
ORDER BY not_before_us LIMIT ?;

-- name: expired_leases
SELECT * FROM steps
WHERE status = 'running' AND lease_expires_us < ?
ORDER BY lease_expires_us LIMIT ?;

-- name: open_steps_of_run
SELECT * FROM steps
WHERE run_id = ? AND status IN ('pending', 'queued', 'running', 'waiting_approval', 'paused');

-- name: select_deps_of_run
SELECT step_id, depends_on FROM step_deps WHERE run_id = ? ORDER BY step_id, depends_on;

-- name: release_dependents
UPDATE steps SET deps_remaining = deps_remaining - 1
WHERE run_id = ?1
  AND step_id IN (SELECT step_id FROM step_deps WHERE run_id = ?1 AND depends_on = ?2)
  AND status = 'pending'
RETURNING *;

-- name: select_budget
SELECT scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
       cost_reserved_micros, cost_used_micros
FROM budgets WHERE scope = ?;

-- name: ensure_budget
INSERT INTO budgets (scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
                     cost_reserved_micros, cost_used_micros)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (scope) DO NOTHING;

-- name: upsert_budget
INSERT INTO budgets (scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
                     cost_reserved_micros, cost_used_micros)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (scope) DO UPDATE SET
    tokens_limit = excluded.tokens_limit, cost_limit_micros = excluded.cost_limit_micros,
    tokens_reserved = excluded.tokens_reserved, tokens_used = excluded.tokens_used,
    cost_reserved_micros = excluded.cost_reserved_micros, cost_used_micros = excluded.cost_used_micros;

-- name: insert_attempt
INSERT INTO attempts (run_id, step_id, attempt, status, worker, started_us, finished_us, error_kind,
                      tokens_reserved, tokens_used, cost_reserved_micros, cost_used_micros,
                      input_tokens, output_tokens, cached_tokens, tool, provider, model)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: finish_attempt
UPDATE attempts SET status = ?, finished_us = ?, error_kind = ?, tokens_used = ?, cost_used_micros = ?,
                    input_tokens = ?, output_tokens = ?, cached_tokens = ?, tool = ?, provider = ?, model = ?
WHERE run_id = ? AND step_id = ? AND attempt = ?;

-- name: select_attempts
SELECT run_id, step_id, attempt, status, worker, started_us, finished_us, error_kind,
       tokens_reserved, tokens_used, cost_reserved_micros, cost_used_micros,
       input_tokens, output_tokens, cached_tokens, tool, provider, model
FROM attempts WHERE run_id = ? ORDER BY started_us, step_id, attempt;

-- name: insert_decision
INSERT INTO policy_decisions (id, run_id, step_id, attempt, pack, hook, effect, reason, at_us, wait_us)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: select_decisions
SELECT id, run_id, step_id, attempt, pack, hook, effect, reason, at_us, wait_us
FROM policy_decisions WHERE run_id = ? ORDER BY at_us, id;

-- name: insert_event
INSERT INTO outbox (event_id, kind, run_id, envelope, created_us) VALUES (?, ?, ?, ?, ?);

-- name: read_outbox
SELECT 0, seq, event_id, kind, run_id, envelope, created_us
FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?;

-- name: get_cursor
SELECT pos_xid, pos_seq FROM outbox_cursors WHERE consumer = ?;

-- name: set_cursor
INSERT INTO outbox_cursors (consumer, pos_xid, pos_seq, updated_us) VALUES (?, ?, ?, ?)
ON CONFLICT (consumer) DO UPDATE SET
    pos_xid = excluded.pos_xid, pos_seq = excluded.pos_seq, updated_us = excluded.updated_us;

-- name: outbox_backlog
SELECT count(*), min(created_us) FROM outbox WHERE seq > ?;

-- name: summary_runs
SELECT status, count(*) FROM runs GROUP BY status;

-- name: summary_steps
SELECT status, count(*) FROM steps GROUP BY status;

-- name: summary_attempts
SELECT s.type, a.status, a.attempt, count(*)
FROM attempts a JOIN steps s ON s.run_id = a.run_id AND s.step_id = a.step_id
GROUP BY s.type, a.status, a.attempt;

-- name: summary_decisions
SELECT pack, hook, effect, count(*) FROM policy_decisions GROUP BY pack, hook, effect;

-- name: summary_budget
SELECT r.workspace, r.app, sum(a.tokens_reserved), sum(a.tokens_used),
       sum(a.cost_reserved_micros), sum(a.cost_used_micros)
FROM attempts a JOIN runs r ON r.id = a.run_id
WHERE a.status <> 'denied'
GROUP BY r.workspace, r.app;

-- name: summary_agents
-- Agent steps and the units they grew (role agent | turn | call) by status; a tool call's tool.
SELECT CASE WHEN type = 'agent' THEN 'agent' ELSE json_extract(spec, '$.unit') END AS role, status,
       CASE WHEN type = 'agent' THEN '' ELSE coalesce(json_extract(spec, '$.inputs.tool'), '') END AS tool,
       count(*)
FROM steps
WHERE type = 'agent' OR json_extract(spec, '$.parent') IS NOT NULL
GROUP BY role, status, tool;

-- name: summary_tools
SELECT a.tool, a.provider, a.error_kind, count(*)
FROM attempts a JOIN steps s ON s.run_id = a.run_id AND s.step_id = a.step_id
WHERE s.type IN ('tool', 'http') AND a.status IN ('succeeded', 'failed')
GROUP BY a.tool, a.provider, a.error_kind;

-- name: try_lease
-- Take or renew a lease: free, expired, or already ours. The epoch grows at each change of holder.
INSERT INTO outbox_leases (name, holder, epoch, expires_us) VALUES (?1, ?2, 1, ?3 + ?4)
ON CONFLICT (name) DO UPDATE SET
    epoch = CASE WHEN outbox_leases.holder = excluded.holder THEN outbox_leases.epoch
                 ELSE outbox_leases.epoch + 1 END,
    holder = excluded.holder,
    expires_us = excluded.expires_us
WHERE outbox_leases.holder = excluded.holder OR outbox_leases.expires_us < ?3
RETURNING epoch;

-- name: release_lease
UPDATE outbox_leases SET expires_us = 0 WHERE name = ? AND holder = ?;

-- Retention (core/retention.py, docs/retention.md): readers' cursors, the head of the outbox, and
-- finished runs deleted in small batches, each in a short write transaction.

-- name: list_cursors
SELECT consumer, pos_xid, pos_seq, updated_us FROM outbox_cursors ORDER BY consumer;

-- name: forget_cursor
DELETE FROM outbox_cursors WHERE consumer = ?;

-- name: first_unread
SELECT created_us FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1;

-- name: outbox_head
SELECT 0, seq, created_us FROM outbox WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3;

-- name: delete_outbox
DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?));

-- name: prunable_runs
SELECT id, finished_us FROM runs
WHERE status IN ('succeeded', 'failed', 'canceled') AND finished_us < ?1 AND (finished_us, id) > (?2, ?3)
  AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = runs.id AND s.status IN ('pending', 'queued', 'running', 'waiting_approval', 'paused'))
ORDER BY finished_us, id LIMIT ?4;

-- name: graph_steps
-- The graph steps (agent steps with an entrypoint) of the given runs: their LangGraph checkpoint threads.
SELECT s.run_id, s.step_id FROM steps s JOIN json_each(?1) j ON s.run_id = j.value
WHERE s.type = 'agent' AND json_extract(s.spec, '$.inputs.entrypoint') IS NOT NULL
ORDER BY s.run_id, s.step_id;

-- name: deletable_runs
-- Of the given runs, those still terminal with no step left open (a canceled run's running attempt).
SELECT r.id FROM runs r JOIN json_each(?1) j ON r.id = j.value
WHERE r.status IN ('succeeded', 'failed', 'canceled')
  AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status IN ('pending', 'queued', 'running', 'waiting_approval', 'paused'));

-- name: delete_run_deps
DELETE FROM step_deps WHERE run_id IN (SELECT value FROM json_each(?));

-- name: delete_run_steps
DELETE FROM steps WHERE run_id IN (SELECT value FROM json_each(?));

-- name: delete_run_attempts
DELETE FROM attempts WHERE run_id IN (SELECT value FROM json_each(?));

-- name: delete_run_decisions
DELETE FROM policy_decisions WHERE run_id IN (SELECT value FROM json_each(?));

-- name: delete_run_keys
DELETE FROM idempotency_keys WHERE run_id IN (SELECT value FROM json_each(?));

-- name: delete_run_origins
DELETE FROM run_origins WHERE run_id IN (SELECT value FROM json_each(?));

-- name: delete_run_budgets
DELETE FROM budgets WHERE scope IN (SELECT ?1 || value FROM json_each(?2));

-- name: delete_runs
DELETE FROM runs WHERE id IN (SELECT value FROM json_each(?));

-- Migration bookkeeping (adapters/sqlfiles.migrate); `checksum` is '' for versions applied before it existed.

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us INTEGER NOT NULL,
    checksum TEXT NOT NULL DEFAULT ''
);

-- name: migrations_columns
SELECT name FROM pragma_table_info('schema_migrations');

-- name: migrations_add_checksum
ALTER TABLE schema_migrations ADD COLUMN checksum TEXT NOT NULL DEFAULT '';

-- name: migrations_applied
SELECT version, checksum FROM schema_migrations;

-- name: migration_applied
SELECT 1 FROM schema_migrations WHERE version = ?;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_us, checksum) VALUES (?, ?, ?, ?);

-- name: record_checksum
UPDATE schema_migrations SET checksum = ? WHERE version = ? AND checksum = '';

-- name: schema_version
SELECT max(version) FROM schema_migrations;

-- name: get_reader_state
SELECT state FROM reader_state WHERE name = ?;

-- name: set_reader_state
INSERT INTO reader_state (name, state, updated_us) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_us = excluded.updated_us;

-- Run origins (core/fork.py): the run a fork was made from.

-- name: insert_origin
INSERT INTO run_origins (run_id, kind, source_run, source_step, actor, created_us) VALUES (?, ?, ?, ?, ?, ?);

-- name: select_origin
SELECT run_id, kind, source_run, source_step, actor, created_us FROM run_origins WHERE run_id = ?;
