-- Schema v3: who steps a recovery job, and until when (processes sharing the
-- database step a job one at a time). Applied once on top of v2.
CREATE TABLE IF NOT EXISTS recovery_leases (
    id        TEXT PRIMARY KEY,
    owner     TEXT NOT NULL,
    until_ms  INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 3;
