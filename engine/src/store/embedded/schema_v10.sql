-- Schema v10: the events fan-out handed over unscheduled (their deliveries
-- kept by the event log until settled), by id. Marking them with
-- `events.state = 3` rewrote each event's row, its body included, once
-- more after the emit had written it: a second write of every event's page.
-- A row here is about the size of the id. (`state = 3` rows of earlier
-- versions still read as kept.)
CREATE TABLE IF NOT EXISTS events_kept (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS events_kept_gone AFTER DELETE ON events
BEGIN
    DELETE FROM events_kept WHERE id = old.id;
END;
PRAGMA user_version = 10;
