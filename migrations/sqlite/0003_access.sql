-- Access control: the device registry (MQTT credentials) and HTTP API tokens.
-- Secrets are never stored: devices keep an Argon2id PHC string, tokens a SHA-256 digest.
-- Every change takes the next access revision, so a running server (or several) can load
-- just what changed since it last looked.
CREATE TABLE access_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO access_revision (id, revision) VALUES (1, 0);

CREATE TABLE device_credentials (
    device_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    revision INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    secret_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revision INTEGER NOT NULL
);
