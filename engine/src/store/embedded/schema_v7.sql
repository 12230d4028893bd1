-- Schema v7: the audit trail, one JSON body per record; ids sort by time.
CREATE TABLE audit (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    subscription_id TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE INDEX audit_by_time ON audit (at_ms);
PRAGMA user_version = 7;
