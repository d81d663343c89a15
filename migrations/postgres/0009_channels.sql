-- Notification channels: where alarm changes are sent to people (email over SMTP). Each keeps
-- its own position in the events outbox, like a webhook. Times are epoch milliseconds.
CREATE TABLE channels (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- email.
    kind          TEXT    NOT NULL,
    -- The channel's settings as JSON: recipients, minimum severity, quiet hours, digest size,
    -- and its own SMTP server when it has one.
    settings      TEXT    NOT NULL,
    -- Every event up to this seq has been sent (or given up on).
    delivered_seq BIGINT  NOT NULL,
    last_error    TEXT,
    last_error_at BIGINT,
    created_at    BIGINT  NOT NULL
);
