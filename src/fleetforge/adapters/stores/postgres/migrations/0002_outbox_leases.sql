-- Named leases over outbox consumers: one forwarder at a time publishes for a cursor.
CREATE TABLE outbox_leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires_us bigint NOT NULL
);
