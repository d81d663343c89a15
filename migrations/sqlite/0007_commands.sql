-- Commands to devices: the ledger of what was asked of a device and what became of it, and a
-- third API role, operator (may send commands, may not manage the registry or definitions).
-- Times are epoch milliseconds.
CREATE TABLE commands (
    id              TEXT    PRIMARY KEY,
    device_id       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    -- The bytes the device receives as the command's payload field (JSON), or raw bytes.
    payload         BLOB    NOT NULL,
    payload_is_json BOOLEAN NOT NULL,
    qos             INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    delivered_at    INTEGER,
    replied_at      INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    reply           TEXT,
    created_by      TEXT,
    -- The seq of its `queued` event: creation order, strict even within one millisecond.
    seq             INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT
);
-- What a device still has to get, oldest first.
CREATE INDEX commands_pending ON commands (device_id, seq) WHERE state IN ('queued', 'sent');
CREATE INDEX commands_device ON commands (device_id, created_at);
CREATE INDEX commands_expiring ON commands (expires_at) WHERE state IN ('queued', 'sent');
CREATE UNIQUE INDEX commands_idempotency ON commands (device_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- SQLite cannot change a CHECK constraint in place: the token table is rebuilt with the new
-- role allowed.
CREATE TABLE api_tokens_new (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    secret_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revision INTEGER NOT NULL
);
INSERT INTO api_tokens_new SELECT id, name, role, secret_hash, created_at, revoked_at, revision FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_new RENAME TO api_tokens;
