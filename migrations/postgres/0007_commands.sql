-- Commands to devices: the ledger of what was asked of a device and what became of it, and a
-- third API role, operator (may send commands, may not manage the registry or definitions).
-- Times are epoch milliseconds. Plain tables: nothing here assumes TimescaleDB or partitions.
CREATE TABLE commands (
    id              text    PRIMARY KEY,
    device_id       text    NOT NULL,
    name            text    NOT NULL,
    -- The bytes the device receives as the command's payload field (JSON), or raw bytes.
    payload         bytea   NOT NULL,
    payload_is_json boolean NOT NULL,
    qos             integer NOT NULL,
    state           text    NOT NULL,
    created_at      bigint  NOT NULL,
    expires_at      bigint  NOT NULL,
    updated_at      bigint  NOT NULL,
    sent_at         bigint,
    delivered_at    bigint,
    replied_at      bigint,
    attempts        integer NOT NULL DEFAULT 0,
    reply           text,
    created_by      text,
    -- The seq of its `queued` event: creation order, strict even within one millisecond.
    seq             bigint NOT NULL DEFAULT 0,
    idempotency_key text
);
CREATE INDEX commands_pending ON commands (device_id, seq) WHERE state IN ('queued', 'sent');
CREATE INDEX commands_device ON commands (device_id, created_at);
CREATE INDEX commands_expiring ON commands (expires_at) WHERE state IN ('queued', 'sent');
CREATE UNIQUE INDEX commands_idempotency ON commands (device_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE api_tokens DROP CONSTRAINT IF EXISTS api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check CHECK (role IN ('admin', 'operator', 'viewer'));
