-- Ids are never reused (AUTOINCREMENT): a state or delivery left from a deleted fence, rule
-- or webhook must never attach to a new one.
-- Geofences, alert rules, their per-device state, the events they raise (the outbox) and the
-- webhooks that deliver them. Times are epoch milliseconds, as in every SQLite table.
CREATE TABLE geofences (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    feature    TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE alert_rules (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    rule       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- One device's standing with one geofence or rule, written with the batch that changed it.
-- Only states worth keeping are here: a device outside a fence with nothing pending has none.
CREATE TABLE judge_state (
    device_id  TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    subject_id INTEGER NOT NULL,
    active     BOOLEAN NOT NULL,
    since      INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    PRIMARY KEY (device_id, subject, subject_id)
) WITHOUT ROWID;

-- The outbox: seq numbers events in commit order; log_position is the write-ahead log record
-- whose document caused the event.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL,
    device_id    TEXT    NOT NULL,
    ts           INTEGER NOT NULL,
    log_position INTEGER,
    fields       TEXT    NOT NULL,
    -- When it was stored: a webhook retries an event for 24 h from then.
    stored_at    INTEGER NOT NULL
);
CREATE INDEX events_ts ON events (ts);

CREATE TABLE webhooks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    url           TEXT    NOT NULL,
    kinds         TEXT    NOT NULL,
    devices       TEXT    NOT NULL,
    secret        TEXT    NOT NULL,
    -- Every event up to this seq has been delivered (or given up on after 24 h).
    delivered_seq INTEGER NOT NULL,
    last_error    TEXT,
    last_error_at INTEGER,
    created_at    INTEGER NOT NULL
);
