-- Herald's transactional outbox table (docs/cdc.md).
--
-- Write one row in the same transaction as the business change it announces;
-- Debezium streams committed rows to Kafka and Herald's relay turns each one
-- into a DomainEvent. Rows are insert-only: the relay dead-letters UPDATEs and
-- skips DELETEs, so an application may delete relayed rows to keep the table
-- small.
--
-- The column names are the Debezium Outbox Event Router's defaults (`id`,
-- `aggregatetype`, `aggregateid`, `type`, `payload`); do not rename them.
CREATE TABLE IF NOT EXISTS herald_outbox (
    id             uuid        PRIMARY KEY,           -- becomes the event id: evt_<32 hex digits>
    tenant_id      text        NOT NULL,              -- Herald tenant (a-z, 0-9, '-', '_'); the Kafka key
    aggregatetype  text        NOT NULL,              -- lineage: e.g. 'work_order'
    aggregateid    text        NOT NULL,              -- lineage: e.g. 'wo-1042'
    type           text        NOT NULL,              -- event type, e.g. 'work_order.completed'
    schema_version int         NOT NULL DEFAULT 1,    -- version of the payload's schema
    dedupe_key     text,                              -- idempotency key per tenant (shared with REST emits)
    payload        jsonb       NOT NULL,              -- the event body: a JSON object
    occurred_at    timestamptz NOT NULL DEFAULT now()
);
