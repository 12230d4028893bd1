-- Schema v6: per-tenant quotas, as JSON (`TenantQuotas`); NULL is none.
ALTER TABLE tenants ADD COLUMN quotas TEXT;
PRAGMA user_version = 6;
