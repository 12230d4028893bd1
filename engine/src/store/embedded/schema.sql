-- Herald embedded store, schema version 1.
CREATE TABLE IF NOT EXISTS tenants (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    hash        BLOB PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_by_tenant ON subscriptions(tenant_id, id);
-- Counters other processes sharing this store poll (e.g. 'subscriptions').
CREATE TABLE IF NOT EXISTS versions (
    name        TEXT PRIMARY KEY,
    value       INTEGER NOT NULL
);
-- state: 0 = appended, not fanned out; 1 = fanned out (deliveries in the schedule);
-- 2 = duplicate (dropped); 3 = fanned out unscheduled (the log keeps its deliveries).
CREATE TABLE IF NOT EXISTS events (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0,
    partition   INTEGER NOT NULL,
    log_offset  INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_tenant ON events(tenant_id, id);
CREATE TABLE IF NOT EXISTS dedupe (
    tenant_id   TEXT NOT NULL,
    dedupe_key  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, dedupe_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_by_expiry ON dedupe(expires_at);
CREATE TABLE IF NOT EXISTS schedule (
    delivery_id     TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    is_replay       INTEGER NOT NULL,
    replay_of       TEXT,
    due_at          INTEGER NOT NULL,
    -- 1 while claimed by a worker; due_at is then the end of the lease.
    leased          INTEGER NOT NULL DEFAULT 0,
    -- Order within the subscription (the event's log offset).
    seq             INTEGER NOT NULL DEFAULT 0,
    -- 1 for strictly ordered subscriptions: only the first pending row is claimable.
    ordered         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS schedule_by_due ON schedule(due_at);
CREATE INDEX IF NOT EXISTS schedule_by_order ON schedule(subscription_id, seq, delivery_id);
CREATE TABLE IF NOT EXISTS delivery_logs (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    outcome         TEXT NOT NULL,
    body            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_tenant ON delivery_logs(tenant_id, id);
CREATE INDEX IF NOT EXISTS logs_by_event ON delivery_logs(tenant_id, event_id, id);
CREATE INDEX IF NOT EXISTS logs_by_subscription ON delivery_logs(tenant_id, subscription_id, id);
PRAGMA user_version = 1;
