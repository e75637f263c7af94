-- Named queries of the PostgreSQL store. Parameters are %s or %(name)s (psycopg).
-- Locks are taken in key order (run_id, step_id / scope) so that concurrent transactions cannot
-- deadlock on each other; queue scans skip rows another transaction holds.

-- name: insert_run
INSERT INTO runs (id, workspace, app, status, spec, seed, slo_tier, queue_target_ms, trace_id,
                  created_us, started_us, finished_us, error_kind, labels, outputs)
VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb);

-- name: claim_idempotency_key
-- A concurrent transaction inserting the same key makes this one wait for it; the select that follows
-- (a new snapshot under READ COMMITTED) then sees the key it committed.
INSERT INTO idempotency_keys (key, run_id, created_us) VALUES (%s, %s, %s) ON CONFLICT (key) DO NOTHING;

-- name: select_idempotency_key
SELECT run_id FROM idempotency_keys WHERE key = %s;

-- name: insert_token
INSERT INTO api_tokens (id, name, scope, digest, created_us, revoked_us) VALUES (%s, %s, %s, %s, %s, %s);

-- name: list_tokens
SELECT id, name, scope, digest, created_us, revoked_us FROM api_tokens ORDER BY created_us, id;

-- name: token_by_digest
SELECT id, name, scope, digest, created_us, revoked_us FROM api_tokens WHERE digest = %s;

-- name: revoke_token
UPDATE api_tokens SET revoked_us = %(now)s WHERE id = %(id)s AND revoked_us IS NULL RETURNING id;

-- name: update_run
UPDATE runs SET status = %s, started_us = %s, finished_us = %s, error_kind = %s,
                outputs = COALESCE(%s::jsonb, outputs) WHERE id = %s;

-- name: select_run
SELECT id, workspace, app, status, spec, seed, slo_tier, queue_target_ms, trace_id,
       created_us, started_us, finished_us, error_kind, labels, outputs
FROM runs WHERE id = %s;

-- name: select_runs
SELECT id, workspace, app, status, spec, seed, slo_tier, queue_target_ms, trace_id,
       created_us, started_us, finished_us, error_kind, labels, outputs
FROM runs WHERE id = ANY(%s::text[]);

-- name: select_run_states
SELECT id, status, started_us, finished_us, error_kind FROM runs WHERE id = ANY(%s::text[]);

-- name: list_runs
SELECT id, workspace, app, status, spec, seed, slo_tier, queue_target_ms, trace_id,
       created_us, started_us, finished_us, error_kind, labels, outputs
FROM runs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(workspace)s::text IS NULL OR workspace = %(workspace)s::text)
ORDER BY created_us DESC LIMIT %(limit)s;

-- name: find_run_ids
-- Compared byte-wise (COLLATE "C"): a linguistic collation may ignore the '-' of an id.
SELECT id FROM runs
WHERE id COLLATE "C" >= %(lo)s AND id COLLATE "C" < %(hi)s AND starts_with(id, %(lo)s)
ORDER BY id COLLATE "C" LIMIT %(limit)s;

-- name: count_open_runs
SELECT count(*)::int FROM runs WHERE status IN ('queued', 'running', 'paused');

-- name: insert_step
INSERT INTO steps (run_id, step_id, type, status, spec, attempt, max_attempts, deps_remaining, due_us,
                   ready_us, not_before_us, queue_target_ms, priority_boost, slo_tier, lease_owner,
                   lease_expires_us, started_us, finished_us, first_failure_us, error_kind, output)
VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb);

-- name: insert_dep
INSERT INTO step_deps (run_id, step_id, depends_on) VALUES (%s, %s, %s);

-- name: update_step
UPDATE steps SET status = %s, attempt = %s, deps_remaining = %s, due_us = %s, ready_us = %s,
                 not_before_us = %s, lease_owner = %s, lease_expires_us = %s, started_us = %s,
                 finished_us = %s, first_failure_us = %s, error_kind = %s, output = %s::jsonb, spec = %s::jsonb
WHERE run_id = %s AND step_id = %s;

-- name: select_steps_of_run
SELECT * FROM steps WHERE run_id = %s ORDER BY ord;

-- name: lock_steps
SELECT s.* FROM steps s
JOIN unnest(%(run_ids)s::text[], %(step_ids)s::text[]) AS k(run_id, step_id)
  ON s.run_id = k.run_id AND s.step_id = k.step_id
ORDER BY s.run_id, s.step_id
FOR UPDATE OF s;

-- name: ready_steps
SELECT * FROM steps
WHERE status = 'queued' AND not_before_us <= %s
ORDER BY due_us LIMIT %s
FOR UPDATE SKIP LOCKED;

-- name: ready_steps_with_runs
-- ready_steps, each with its run's columns (r_*) on the first step of that run only (NULL on the others),
-- so a claim reads its steps and their runs in one statement.
WITH ready AS (
    SELECT * FROM steps
    WHERE status = 'queued' AND not_before_us <= %(now)s
    ORDER BY due_us LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), firsts AS (
    SELECT ready.*, row_number() OVER (PARTITION BY ready.run_id) = 1 AS first_of_run FROM ready
)
SELECT f.*, r.id AS r_id, r.workspace AS r_workspace, r.app AS r_app, r.status AS r_status, r.spec AS r_spec,
       r.seed AS r_seed, r.slo_tier AS r_slo_tier, r.queue_target_ms AS r_queue_target_ms,
       r.trace_id AS r_trace_id, r.created_us AS r_created_us, r.started_us AS r_started_us,
       r.finished_us AS r_finished_us, r.error_kind AS r_error_kind, r.labels AS r_labels, r.outputs AS r_outputs
FROM firsts f LEFT JOIN runs r ON f.first_of_run AND r.id = f.run_id
ORDER BY f.due_us;

-- name: select_deps_of_runs
SELECT run_id, step_id, depends_on FROM step_deps WHERE run_id = ANY(%s::text[]) ORDER BY run_id, step_id, depends_on;

-- name: expired_approvals
-- Steps waiting for a person past their approval deadline (not_before_us; 0 when the wait has no limit).
SELECT * FROM steps
WHERE status = 'waiting_approval' AND not_before_us > 0 AND not_before_us <= %s
ORDER BY not_before_us LIMIT %s
FOR UPDATE SKIP LOCKED;

-- name: expired_leases
SELECT * FROM steps
WHERE status = 'running' AND lease_expires_us < %s
ORDER BY lease_expires_us LIMIT %s
FOR UPDATE SKIP LOCKED;

-- name: open_steps_of_runs
SELECT * FROM steps
WHERE run_id = ANY(%s::text[]) AND status IN ('pending', 'queued', 'running', 'waiting_approval', 'paused')
ORDER BY run_id, step_id
FOR UPDATE;

-- name: release_dependents
-- One statement for the whole batch: a dependent of several finished steps loses one per edge.
-- The CTE locks the dependents in key order before the UPDATE touches them.
WITH done AS (
    SELECT DISTINCT d.run_id, d.step_id
    FROM unnest(%(run_ids)s::text[], %(step_ids)s::text[]) AS d(run_id, step_id)
), hits AS (
    SELECT sd.run_id, sd.step_id, count(*)::int AS n
    FROM step_deps sd JOIN done ON sd.run_id = done.run_id AND sd.depends_on = done.step_id
    GROUP BY sd.run_id, sd.step_id
), locked AS (
    SELECT s.run_id, s.step_id, h.n
    FROM steps s JOIN hits h ON s.run_id = h.run_id AND s.step_id = h.step_id
    WHERE s.status = 'pending'
    ORDER BY s.run_id, s.step_id
    FOR UPDATE OF s
)
UPDATE steps s SET deps_remaining = s.deps_remaining - l.n
FROM locked l
WHERE s.run_id = l.run_id AND s.step_id = l.step_id AND s.status = 'pending'
RETURNING s.*;

-- name: lock_budgets
SELECT scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
       cost_reserved_micros, cost_used_micros
FROM budgets WHERE scope = ANY(%s::text[])
ORDER BY scope
FOR UPDATE;

-- name: lock_budgets_if_limited
-- Rows of scopes in if_limited only when they carry a limit (checked again on a row updated concurrently).
SELECT scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
       cost_reserved_micros, cost_used_micros
FROM budgets
WHERE scope = ANY(%(scopes)s::text[])
  AND (scope <> ALL(%(if_limited)s::text[]) OR tokens_limit IS NOT NULL OR cost_limit_micros IS NOT NULL)
ORDER BY scope
FOR UPDATE;

-- name: ensure_budget
INSERT INTO budgets (scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
                     cost_reserved_micros, cost_used_micros)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (scope) DO NOTHING;

-- name: upsert_budget
INSERT INTO budgets (scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
                     cost_reserved_micros, cost_used_micros)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (scope) DO UPDATE SET
    tokens_limit = excluded.tokens_limit, cost_limit_micros = excluded.cost_limit_micros,
    tokens_reserved = excluded.tokens_reserved, tokens_used = excluded.tokens_used,
    cost_reserved_micros = excluded.cost_reserved_micros, cost_used_micros = excluded.cost_used_micros;

-- name: insert_attempt
INSERT INTO attempts (run_id, step_id, attempt, status, worker, started_us, finished_us, error_kind,
                      tokens_reserved, tokens_used, cost_reserved_micros, cost_used_micros,
                      input_tokens, output_tokens, cached_tokens, tool, provider, model)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: finish_attempt
UPDATE attempts SET status = %s, finished_us = %s, error_kind = %s, tokens_used = %s, cost_used_micros = %s,
                    input_tokens = %s, output_tokens = %s, cached_tokens = %s, tool = %s, provider = %s,
                    model = %s
WHERE run_id = %s AND step_id = %s AND attempt = %s;

-- name: select_attempts
SELECT run_id, step_id, attempt, status, worker, started_us, finished_us, error_kind,
       tokens_reserved, tokens_used, cost_reserved_micros, cost_used_micros,
       input_tokens, output_tokens, cached_tokens, tool, provider, model
FROM attempts WHERE run_id = %s ORDER BY started_us, step_id, attempt;

-- name: insert_decision
INSERT INTO policy_decisions (id, run_id, step_id, attempt, pack, hook, effect, reason, at_us, wait_us)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: select_decisions
SELECT id, run_id, step_id, attempt, pack, hook, effect, reason, at_us, wait_us
FROM policy_decisions WHERE run_id = %s ORDER BY at_us, id;

-- name: read_outbox
-- Gap-safe: only rows of transactions older than every transaction still in progress, so no row
-- can later commit before a position already handed out.
SELECT xid::text::bigint, seq, event_id, kind, run_id, envelope, created_us
FROM outbox
WHERE (xid, seq) > (%(xid)s::text::xid8, %(seq)s::bigint)
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, seq
LIMIT %(limit)s;

-- name: get_cursor
SELECT pos_xid, pos_seq FROM outbox_cursors WHERE consumer = %s;

-- name: set_cursor
INSERT INTO outbox_cursors (consumer, pos_xid, pos_seq, updated_us) VALUES (%s, %s, %s, %s)
ON CONFLICT (consumer) DO UPDATE SET
    pos_xid = excluded.pos_xid, pos_seq = excluded.pos_seq, updated_us = excluded.updated_us;

-- name: outbox_backlog
SELECT count(*)::int, min(created_us)
FROM outbox WHERE (xid, seq) > (%(xid)s::text::xid8, %(seq)s::bigint);

-- name: summary_runs
SELECT status, count(*)::int FROM runs GROUP BY status;

-- name: summary_steps
SELECT status, count(*)::int FROM steps GROUP BY status;

-- name: summary_attempts
SELECT s.type, a.status, a.attempt, count(*)::int
FROM attempts a JOIN steps s ON s.run_id = a.run_id AND s.step_id = a.step_id
GROUP BY s.type, a.status, a.attempt;

-- name: summary_decisions
SELECT pack, hook, effect, count(*)::int FROM policy_decisions GROUP BY pack, hook, effect;

-- name: summary_budget
SELECT r.workspace, r.app, sum(a.tokens_reserved)::bigint, sum(a.tokens_used)::bigint,
       sum(a.cost_reserved_micros)::bigint, sum(a.cost_used_micros)::bigint
FROM attempts a JOIN runs r ON r.id = a.run_id
WHERE a.status <> 'denied'
GROUP BY r.workspace, r.app;

-- name: summary_agents
-- Agent steps and the units they grew (role agent | turn | call) by status; a tool call's tool.
SELECT CASE WHEN type = 'agent' THEN 'agent' ELSE spec->>'unit' END AS role, status,
       CASE WHEN type = 'agent' THEN '' ELSE coalesce(spec->'inputs'->>'tool', '') END AS tool,
       count(*)::int
FROM steps
WHERE type = 'agent' OR spec->>'parent' IS NOT NULL
GROUP BY 1, 2, 3;

-- name: summary_tools
SELECT a.tool, a.provider, a.error_kind, count(*)::int
FROM attempts a JOIN steps s ON s.run_id = a.run_id AND s.step_id = a.step_id
WHERE s.type IN ('tool', 'http') AND a.status IN ('succeeded', 'failed')
GROUP BY a.tool, a.provider, a.error_kind;

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_us bigint NOT NULL,
    checksum text NOT NULL DEFAULT ''
);

-- name: migrations_add_checksum
ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text NOT NULL DEFAULT '';

-- name: migration_lock
SELECT pg_advisory_xact_lock(hashtext('fleetforge.migrate'), hashtext(%s));

-- name: migrations_applied
SELECT version, checksum FROM schema_migrations;

-- name: migration_applied
SELECT 1 FROM schema_migrations WHERE version = %s;

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_us, checksum) VALUES (%s, %s, %s, %s);

-- name: record_checksum
UPDATE schema_migrations SET checksum = %s WHERE version = %s AND checksum = '';

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_migrations;

-- Batch writes: one statement per batch, the rows as one JSON array of arrays (one array per row,
-- values in the order of the aliases; JSON text values in their text form). The client encodes it
-- in C and the server unpacks it cheaply, where a per-row statement or one array parameter per
-- column costs both sides more per row. Rows of `steps` are locked by the scheduler before it writes
-- them; rows of `runs` are not, so update_runs_json locks them in key order first. Updates read the
-- rows through unnest(ARRAY(...)): the planner then expects a few rows (not the 100 it assumes for
-- jsonb_array_elements) and probes the primary key per row instead of hashing the whole table.

-- name: update_runs_json
WITH u AS MATERIALIZED (
    SELECT e->>0 AS status, (e->>1)::bigint AS started_us, (e->>2)::bigint AS finished_us,
           e->>3 AS error_kind, (e->>4)::jsonb AS outputs, e->>5 AS id
    FROM unnest(ARRAY(SELECT jsonb_array_elements(%s::jsonb))) AS e
), locked AS MATERIALIZED (
    SELECT r.id FROM runs r JOIN u ON r.id = u.id ORDER BY r.id FOR UPDATE OF r
)
UPDATE runs r SET status = u.status, started_us = u.started_us, finished_us = u.finished_us,
                  error_kind = u.error_kind, outputs = COALESCE(u.outputs, r.outputs)
FROM u JOIN locked l ON l.id = u.id
WHERE r.id = u.id;

-- name: insert_steps_json
-- Rows are inserted in the order given, so `ord` (the listing order) follows it.
INSERT INTO steps (run_id, step_id, type, status, spec, attempt, max_attempts, deps_remaining, due_us,
                   ready_us, not_before_us, queue_target_ms, priority_boost, slo_tier, lease_owner,
                   lease_expires_us, started_us, finished_us, first_failure_us, error_kind, output)
SELECT e->>0, e->>1, e->>2, e->>3, (e->>4)::jsonb, (e->>5)::int, (e->>6)::int, (e->>7)::int,
       (e->>8)::bigint, (e->>9)::bigint, (e->>10)::bigint, (e->>11)::bigint, (e->>12)::bigint, e->>13,
       e->>14, (e->>15)::bigint, (e->>16)::bigint, (e->>17)::bigint, (e->>18)::bigint, e->>19,
       (e->>20)::jsonb
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS x(e, n)
ORDER BY n;

-- name: update_steps_json
UPDATE steps s SET status = u.status, attempt = u.attempt, deps_remaining = u.deps_remaining,
                   due_us = u.due_us, ready_us = u.ready_us, not_before_us = u.not_before_us,
                   lease_owner = u.lease_owner, lease_expires_us = u.lease_expires_us,
                   started_us = u.started_us, finished_us = u.finished_us,
                   first_failure_us = u.first_failure_us, error_kind = u.error_kind, output = u.output,
                   spec = u.spec
FROM (
    SELECT e->>0 AS status, (e->>1)::int AS attempt, (e->>2)::int AS deps_remaining,
           (e->>3)::bigint AS due_us, (e->>4)::bigint AS ready_us, (e->>5)::bigint AS not_before_us,
           e->>6 AS lease_owner, (e->>7)::bigint AS lease_expires_us, (e->>8)::bigint AS started_us,
           (e->>9)::bigint AS finished_us, (e->>10)::bigint AS first_failure_us, e->>11 AS error_kind,
           (e->>12)::jsonb AS output, (e->>13)::jsonb AS spec, e->>14 AS run_id, e->>15 AS step_id
    FROM unnest(ARRAY(SELECT jsonb_array_elements(%s::jsonb))) AS e
) u
WHERE s.run_id = u.run_id AND s.step_id = u.step_id;

-- name: ensure_budgets_json
INSERT INTO budgets (scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
                     cost_reserved_micros, cost_used_micros)
SELECT e->>0, (e->>1)::bigint, (e->>2)::bigint, (e->>3)::bigint, (e->>4)::bigint, (e->>5)::bigint,
       (e->>6)::bigint
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS x(e, n)
ORDER BY n
ON CONFLICT (scope) DO NOTHING;

-- name: upsert_budgets_json
INSERT INTO budgets (scope, tokens_limit, cost_limit_micros, tokens_reserved, tokens_used,
                     cost_reserved_micros, cost_used_micros)
SELECT e->>0, (e->>1)::bigint, (e->>2)::bigint, (e->>3)::bigint, (e->>4)::bigint, (e->>5)::bigint,
       (e->>6)::bigint
FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS x(e, n)
ORDER BY n
ON CONFLICT (scope) DO UPDATE SET
    tokens_limit = excluded.tokens_limit, cost_limit_micros = excluded.cost_limit_micros,
    tokens_reserved = excluded.tokens_reserved, tokens_used = excluded.tokens_used,
    cost_reserved_micros = excluded.cost_reserved_micros, cost_used_micros = excluded.cost_used_micros;

-- name: insert_attempts_json
INSERT INTO attempts (run_id, step_id, attempt, status, worker, started_us, finished_us, error_kind,
                      tokens_reserved, tokens_used, cost_reserved_micros, cost_used_micros,
                      input_tokens, output_tokens, cached_tokens, tool, provider, model)
SELECT e->>0, e->>1, (e->>2)::int, e->>3, e->>4, (e->>5)::bigint, (e->>6)::bigint, e->>7,
       (e->>8)::bigint, (e->>9)::bigint, (e->>10)::bigint, (e->>11)::bigint, (e->>12)::bigint,
       (e->>13)::bigint, (e->>14)::bigint, e->>15, e->>16, e->>17
FROM jsonb_array_elements(%s::jsonb) AS e;

-- name: finish_attempts_json
UPDATE attempts a SET status = u.status, finished_us = u.finished_us, error_kind = u.error_kind,
                      tokens_used = u.tokens_used, cost_used_micros = u.cost_used_micros,
                      input_tokens = u.input_tokens, output_tokens = u.output_tokens,
                      cached_tokens = u.cached_tokens, tool = u.tool, provider = u.provider, model = u.model
FROM (
    SELECT e->>0 AS status, (e->>1)::bigint AS finished_us, e->>2 AS error_kind,
           (e->>3)::bigint AS tokens_used, (e->>4)::bigint AS cost_used_micros,
           (e->>5)::bigint AS input_tokens, (e->>6)::bigint AS output_tokens,
           (e->>7)::bigint AS cached_tokens, e->>8 AS tool, e->>9 AS provider, e->>10 AS model,
           e->>11 AS run_id, e->>12 AS step_id, (e->>13)::int AS attempt
    FROM unnest(ARRAY(SELECT jsonb_array_elements(%s::jsonb))) AS e
) u
WHERE a.run_id = u.run_id AND a.step_id = u.step_id AND a.attempt = u.attempt;

-- name: insert_events_set
-- Events as one binary array per column (large text values travel best that way); rows are
-- numbered in the order given, so seq follows it (as with COPY).
INSERT INTO outbox (event_id, kind, run_id, envelope, created_us)
SELECT e.event_id, e.kind, e.run_id, e.envelope, %b::bigint
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) WITH ORDINALITY
    AS e(event_id, kind, run_id, envelope, n)
ORDER BY e.n;

-- name: try_lease
-- Take or renew a lease: free, expired, or already ours. Expiry uses the server's clock; the epoch
-- grows at each change of holder.
INSERT INTO outbox_leases AS l (name, holder, epoch, expires_us)
VALUES (%(name)s, %(holder)s, 1,
        (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + %(ttl_us)s)
ON CONFLICT (name) DO UPDATE SET
    epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END,
    holder = excluded.holder,
    expires_us = excluded.expires_us
WHERE l.holder = excluded.holder OR l.expires_us < excluded.expires_us - %(ttl_us)s
RETURNING l.epoch;

-- name: release_lease
UPDATE outbox_leases SET expires_us = 0 WHERE name = %s AND holder = %s;

-- Retention (core/retention.py, docs/retention.md): readers' cursors, the head of the outbox, and
-- finished runs deleted in small batches, each in its own short transaction. No table lock is
-- taken; runs another transaction holds are skipped (SKIP LOCKED) and left for the next pass.

-- name: list_cursors
SELECT consumer, pos_xid, pos_seq, updated_us FROM outbox_cursors ORDER BY consumer;

-- name: forget_cursor
DELETE FROM outbox_cursors WHERE consumer = %s RETURNING consumer;

-- name: first_unread
SELECT created_us FROM outbox
WHERE (xid, seq) > (%(xid)s::text::xid8, %(seq)s::bigint)
ORDER BY xid, seq LIMIT 1;

-- name: outbox_head
-- Gap-safe like read_outbox: a transaction still in progress may yet commit rows below any
-- position past its xid, so the head never reaches beyond the oldest one.
SELECT xid::text::bigint, seq, created_us FROM outbox
WHERE (xid, seq) > (%(after_xid)s::text::xid8, %(after_seq)s::bigint)
  AND (xid, seq) <= (%(upto_xid)s::text::xid8, %(upto_seq)s::bigint)
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, seq
LIMIT %(limit)s;

-- name: delete_outbox
DELETE FROM outbox WHERE seq = ANY(%s::bigint[]);

-- name: prunable_runs
SELECT id, finished_us FROM runs
WHERE status IN ('succeeded', 'failed', 'canceled') AND finished_us < %(before)s
  AND (finished_us, id) > (%(after_us)s::bigint, %(after_id)s::text)
  AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = runs.id AND s.status IN ('pending', 'queued', 'running', 'waiting_approval', 'paused'))
ORDER BY finished_us, id
LIMIT %(limit)s;

-- name: graph_steps
-- The graph steps (agent steps with an entrypoint) of the given runs: their LangGraph checkpoint threads.
SELECT run_id, step_id FROM steps
WHERE run_id = ANY(%(ids)s::text[]) AND type = 'agent' AND spec->'inputs' ? 'entrypoint'
ORDER BY run_id, step_id;

-- name: delete_runs
-- Of the given runs, those still terminal with no step left open (a canceled run's running attempt)
-- and not held by another transaction, with every row that belongs to them.
WITH doomed AS MATERIALIZED (
    SELECT r.id FROM runs r
    WHERE r.id = ANY(%(ids)s::text[])
      AND r.status IN ('succeeded', 'failed', 'canceled')
      AND NOT EXISTS (SELECT 1 FROM steps s
                      WHERE s.run_id = r.id AND s.status IN ('pending', 'queued', 'running', 'waiting_approval', 'paused'))
    ORDER BY r.id
    FOR UPDATE OF r SKIP LOCKED
), d AS (
    DELETE FROM step_deps WHERE run_id IN (SELECT id FROM doomed)
), s AS (
    DELETE FROM steps WHERE run_id IN (SELECT id FROM doomed)
), a AS (
    DELETE FROM attempts WHERE run_id IN (SELECT id FROM doomed)
), p AS (
    DELETE FROM policy_decisions WHERE run_id IN (SELECT id FROM doomed)
), b AS (
    DELETE FROM budgets WHERE scope IN (SELECT %(budget_prefix)s || id FROM doomed)
), k AS (
    DELETE FROM idempotency_keys WHERE run_id IN (SELECT id FROM doomed)
), o AS (
    DELETE FROM run_origins WHERE run_id IN (SELECT id FROM doomed)
)
DELETE FROM runs WHERE id IN (SELECT id FROM doomed)
RETURNING id;

-- name: get_reader_state
SELECT state FROM reader_state WHERE name = %s;

-- name: set_reader_state
INSERT INTO reader_state (name, state, updated_us) VALUES (%s, %s, %s)
ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_us = excluded.updated_us;

-- Run origins (core/fork.py): the run a fork was made from.

-- name: insert_origin
INSERT INTO run_origins (run_id, kind, source_run, source_step, actor, created_us) VALUES (%s, %s, %s, %s, %s, %s);

-- name: select_origin
SELECT run_id, kind, source_run, source_step, actor, created_us FROM run_origins WHERE run_id = %s;

-- name: notify_ready
-- Sent when the transaction commits: workers LISTENing on the channel claim at once (wakeup.py).
SELECT pg_notify(%s, '');
