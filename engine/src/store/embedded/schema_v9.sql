-- Schema v9: retention. Pruning keeps every event that still has a pending
-- delivery, found through this index.
CREATE INDEX IF NOT EXISTS schedule_by_event ON schedule(event_id);
PRAGMA user_version = 9;
