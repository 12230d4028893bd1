-- Schema v4: deliveries held for a paused subscription (due again only at a
-- re-check time; made due at once when the subscription is resumed).
ALTER TABLE schedule ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
PRAGMA user_version = 4;
