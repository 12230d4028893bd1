-- Schema v5: scoped, expiring API keys. `scopes` holds the key's scopes
-- separated by spaces; NULL (every key stored before v5) is full access,
-- as those keys had. `expires_at` is unix ms; NULL never expires.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
PRAGMA user_version = 5;
