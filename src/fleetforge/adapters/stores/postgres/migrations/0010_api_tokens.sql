-- Bearer tokens of the HTTP API: only their SHA-256 is kept (the token is shown once, at creation).
-- scope is read, submit or control; revoked_us is NULL while the token is valid.
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created_us BIGINT NOT NULL,
    revoked_us BIGINT
);
