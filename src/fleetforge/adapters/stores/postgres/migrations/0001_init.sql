-- State, cost ledger, policy decisions and the outbox. Times are microseconds since the epoch;
-- costs are integer micro-USD. Tables are created in the store's schema (the search_path).
CREATE TABLE runs (
    id text PRIMARY KEY,
    workspace text NOT NULL,
    app text NOT NULL,
    status text NOT NULL,
    spec jsonb NOT NULL,
    seed bigint NOT NULL,
    slo_tier text NOT NULL,
    queue_target_ms bigint NOT NULL,
    trace_id text NOT NULL,
    created_us bigint NOT NULL,
    started_us bigint,
    finished_us bigint,
    error_kind text NOT NULL DEFAULT '',
    labels jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_by_created ON runs (created_us);
CREATE INDEX runs_open ON runs (status) WHERE status IN ('queued', 'running');

CREATE TABLE steps (
    run_id text NOT NULL,
    step_id text NOT NULL,
    type text NOT NULL,
    status text NOT NULL,
    spec jsonb NOT NULL,
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    deps_remaining integer NOT NULL,
    due_us bigint NOT NULL,
    ready_us bigint NOT NULL,
    not_before_us bigint NOT NULL,
    queue_target_ms bigint NOT NULL,
    priority_boost bigint NOT NULL,
    slo_tier text NOT NULL,
    lease_owner text NOT NULL DEFAULT '',
    lease_expires_us bigint NOT NULL DEFAULT 0,
    started_us bigint,
    finished_us bigint,
    first_failure_us bigint,
    error_kind text NOT NULL DEFAULT '',
    output jsonb,
    -- insertion order (SQLite's rowid), for listing the steps of a run as submitted
    ord bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX steps_ready ON steps (due_us) WHERE status = 'queued';
CREATE INDEX steps_leased ON steps (lease_expires_us) WHERE status = 'running';
CREATE INDEX steps_open ON steps (run_id) WHERE status IN ('pending', 'queued', 'running');

CREATE TABLE step_deps (
    run_id text NOT NULL,
    depends_on text NOT NULL,
    step_id text NOT NULL,
    PRIMARY KEY (run_id, depends_on, step_id)
);

CREATE TABLE budgets (
    scope text PRIMARY KEY,
    tokens_limit bigint,
    cost_limit_micros bigint,
    tokens_reserved bigint NOT NULL DEFAULT 0,
    tokens_used bigint NOT NULL DEFAULT 0,
    cost_reserved_micros bigint NOT NULL DEFAULT 0,
    cost_used_micros bigint NOT NULL DEFAULT 0
);

CREATE TABLE attempts (
    run_id text NOT NULL,
    step_id text NOT NULL,
    attempt integer NOT NULL,
    status text NOT NULL,
    worker text NOT NULL,
    started_us bigint NOT NULL,
    finished_us bigint,
    error_kind text NOT NULL DEFAULT '',
    tokens_reserved bigint NOT NULL DEFAULT 0,
    tokens_used bigint NOT NULL DEFAULT 0,
    cost_reserved_micros bigint NOT NULL DEFAULT 0,
    cost_used_micros bigint NOT NULL DEFAULT 0,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens bigint NOT NULL DEFAULT 0,
    tool text NOT NULL DEFAULT '',
    provider text NOT NULL DEFAULT '',
    model text NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, step_id, attempt)
);

CREATE TABLE policy_decisions (
    id text PRIMARY KEY,
    run_id text NOT NULL,
    step_id text NOT NULL,
    attempt integer NOT NULL,
    pack text NOT NULL,
    hook text NOT NULL,
    effect text NOT NULL,
    reason text NOT NULL,
    at_us bigint NOT NULL
);
CREATE INDEX policy_decisions_by_run ON policy_decisions (run_id);

-- Delivery order is (xid, seq): readers only pass rows whose transaction is older than every
-- transaction still in progress, so a late commit is never skipped.
CREATE TABLE outbox (
    seq bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id text NOT NULL UNIQUE,
    kind text NOT NULL,
    run_id text NOT NULL,
    envelope text NOT NULL,
    created_us bigint NOT NULL
);
CREATE INDEX outbox_by_position ON outbox (xid, seq);

CREATE TABLE outbox_cursors (
    consumer text PRIMARY KEY,
    pos_xid bigint NOT NULL DEFAULT 0,
    pos_seq bigint NOT NULL DEFAULT 0,
    updated_us bigint NOT NULL
);
