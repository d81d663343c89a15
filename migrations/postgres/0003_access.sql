-- Access control: the device registry (MQTT credentials) and HTTP API tokens.
-- Secrets are never stored: devices keep an Argon2id PHC string, tokens a SHA-256 digest.
-- Every change takes the next access revision, so a running server (or several) can load
-- just what changed since it last looked.
CREATE TABLE access_revision (
    id integer PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL
);
INSERT INTO access_revision (id, revision) VALUES (1, 0);

CREATE TABLE device_credentials (
    device_id text PRIMARY KEY,
    secret_hash text NOT NULL,
    enabled boolean NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    revision bigint NOT NULL
);

CREATE TABLE api_tokens (
    id text PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('admin', 'viewer')),
    secret_hash text NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint,
    revision bigint NOT NULL
);
