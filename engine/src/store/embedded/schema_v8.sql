-- Schema v8: tenant deletion; NULL is active, else 'deleting' or 'deleted'.
ALTER TABLE tenants ADD COLUMN state TEXT;
PRAGMA user_version = 8;
