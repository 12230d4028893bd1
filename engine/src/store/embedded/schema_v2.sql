-- Herald embedded store, schema version 2: named, revocable API keys, the
-- event-type catalogue and durable recovery jobs. Applied once on top of v1.
ALTER TABLE api_keys ADD COLUMN id TEXT;
ALTER TABLE api_keys ADD COLUMN name TEXT;
ALTER TABLE api_keys ADD COLUMN prefix TEXT;
ALTER TABLE api_keys ADD COLUMN revoked_at INTEGER;
UPDATE api_keys SET id = 'key_' || lower(hex(randomblob(16))), prefix = 'hk_' WHERE id IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_by_id ON api_keys(id);
CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys(tenant_id, id);
CREATE TABLE IF NOT EXISTS event_types (
    tenant_id       TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    body            TEXT NOT NULL,
    PRIMARY KEY (tenant_id, event_type, schema_version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recoveries (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    finished    INTEGER NOT NULL DEFAULT 0,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recoveries_unfinished ON recoveries(finished);
-- The deliveries a recovery scheduled; a delivery is done once it left the schedule.
CREATE TABLE IF NOT EXISTS recovery_deliveries (
    recovery_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    PRIMARY KEY (recovery_id, delivery_id)
) WITHOUT ROWID;
PRAGMA user_version = 2;
