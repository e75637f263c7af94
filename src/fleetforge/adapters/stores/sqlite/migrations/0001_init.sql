-- State, cost ledger, policy decisions and the outbox. Times are microseconds since the epoch;
-- costs are integer micro-USD.
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    workspace TEXT NOT NULL,
    app TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    seed INTEGER NOT NULL,
    slo_tier TEXT NOT NULL,
    queue_target_ms INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    started_us INTEGER,
    finished_us INTEGER,
    error_kind TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_by_created ON runs (created_us);
CREATE INDEX runs_open ON runs (status) WHERE status IN ('queued', 'running');

CREATE TABLE steps (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    deps_remaining INTEGER NOT NULL,
    due_us INTEGER NOT NULL,
    ready_us INTEGER NOT NULL,
    not_before_us INTEGER NOT NULL,
    queue_target_ms INTEGER NOT NULL,
    priority_boost INTEGER NOT NULL,
    slo_tier TEXT NOT NULL,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_expires_us INTEGER NOT NULL DEFAULT 0,
    started_us INTEGER,
    finished_us INTEGER,
    first_failure_us INTEGER,
    error_kind TEXT NOT NULL DEFAULT '',
    output TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX steps_ready ON steps (due_us) WHERE status = 'queued';
CREATE INDEX steps_leased ON steps (lease_expires_us) WHERE status = 'running';

CREATE TABLE step_deps (
    run_id TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    step_id TEXT NOT NULL,
    PRIMARY KEY (run_id, depends_on, step_id)
);

CREATE TABLE budgets (
    scope TEXT PRIMARY KEY,
    tokens_limit INTEGER,
    cost_limit_micros INTEGER,
    tokens_reserved INTEGER NOT NULL DEFAULT 0,
    tokens_used INTEGER NOT NULL DEFAULT 0,
    cost_reserved_micros INTEGER NOT NULL DEFAULT 0,
    cost_used_micros INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE attempts (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    worker TEXT NOT NULL,
    started_us INTEGER NOT NULL,
    finished_us INTEGER,
    error_kind TEXT NOT NULL DEFAULT '',
    tokens_reserved INTEGER NOT NULL DEFAULT 0,
    tokens_used INTEGER NOT NULL DEFAULT 0,
    cost_reserved_micros INTEGER NOT NULL DEFAULT 0,
    cost_used_micros INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    tool TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, step_id, attempt)
);

CREATE TABLE policy_decisions (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pack TEXT NOT NULL,
    hook TEXT NOT NULL,
    effect TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_us INTEGER NOT NULL
);
CREATE INDEX policy_decisions_by_run ON policy_decisions (run_id);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    run_id TEXT NOT NULL,
    envelope TEXT NOT NULL,
    created_us INTEGER NOT NULL
);

CREATE TABLE outbox_cursors (
    consumer TEXT PRIMARY KEY,
    pos_xid INTEGER NOT NULL DEFAULT 0,
    pos_seq INTEGER NOT NULL DEFAULT 0,
    updated_us INTEGER NOT NULL
);
