-- Named leases over outbox consumers: one forwarder at a time publishes for a cursor.
CREATE TABLE outbox_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_us INTEGER NOT NULL
);
