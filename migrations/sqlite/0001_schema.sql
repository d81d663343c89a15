-- Fieldline schema for the embedded SQLite store. Times are INTEGER epoch milliseconds.
-- One index per time series, on (device, time): the queries are "this device, this range".

CREATE TABLE positions (
    device_id TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    seq       INTEGER,
    lat       REAL    NOT NULL,
    lon       REAL    NOT NULL,
    speed     REAL,
    heading   REAL,
    alt       REAL,
    accuracy  REAL
);
CREATE INDEX positions_device_ts ON positions (device_id, ts);

CREATE TABLE telemetry (
    device_id TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    seq       INTEGER,
    metric    TEXT    NOT NULL,
    value     REAL    NOT NULL
);
CREATE INDEX telemetry_device_metric_ts ON telemetry (device_id, metric, ts);

CREATE TABLE statuses (
    device_id TEXT    NOT NULL,
    ts        INTEGER NOT NULL,
    seq       INTEGER,
    online    INTEGER NOT NULL
);
CREATE INDEX statuses_device_ts ON statuses (device_id, ts);

CREATE TABLE devices (
    device_id          TEXT PRIMARY KEY,
    first_seen         INTEGER NOT NULL,
    last_seen          INTEGER NOT NULL,
    last_fix_ms        INTEGER,
    last_location      TEXT,
    last_metrics       TEXT NOT NULL DEFAULT '{}',
    -- Per kind, the seq and time (ms) of the newest document that carried a seq.
    last_seq_telemetry    INTEGER,
    last_seq_ts_telemetry INTEGER,
    last_seq_location     INTEGER,
    last_seq_ts_location  INTEGER,
    last_seq_status       INTEGER,
    last_seq_ts_status    INTEGER
) WITHOUT ROWID;

CREATE TABLE rejected (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at     INTEGER NOT NULL,
    topic           TEXT    NOT NULL,
    device_id       TEXT,
    reason          TEXT    NOT NULL,
    detail          TEXT    NOT NULL,
    payload_size    INTEGER NOT NULL,
    payload_preview TEXT    NOT NULL
);
