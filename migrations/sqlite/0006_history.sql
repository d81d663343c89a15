-- History: telemetry roll-ups (1 minute and 1 hour) and the minutes whose roll-ups are out of
-- date. A roll-up row holds sum, min, max and count, which merge exactly. Every batch that
-- writes telemetry marks its minutes in rollup_pending (bumping `version`); the roll-up task
-- recomputes a marked minute from the raw rows and clears the mark only if no batch has
-- marked it since. Queries read raw rows for marked minutes and roll-ups for the rest, so an
-- answer is exact whatever the roll-up task has reached. Times are epoch milliseconds.

CREATE TABLE telemetry_1m (
    device_id TEXT    NOT NULL,
    metric    TEXT    NOT NULL,
    bucket    INTEGER NOT NULL,
    sum       REAL    NOT NULL,
    min       REAL    NOT NULL,
    max       REAL    NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
) WITHOUT ROWID;
CREATE INDEX telemetry_1m_bucket ON telemetry_1m (bucket);

CREATE TABLE telemetry_1h (
    device_id TEXT    NOT NULL,
    metric    TEXT    NOT NULL,
    bucket    INTEGER NOT NULL,
    sum       REAL    NOT NULL,
    min       REAL    NOT NULL,
    max       REAL    NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
) WITHOUT ROWID;
CREATE INDEX telemetry_1h_bucket ON telemetry_1h (bucket);

CREATE TABLE rollup_pending (
    minute  INTEGER PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 0
);

-- The roll-up task reads one minute of every device at a time, and retention deletes the
-- oldest rows first: both by time.
CREATE INDEX telemetry_ts ON telemetry (ts);

INSERT INTO rollup_pending (minute) SELECT DISTINCT ts - ts % 60000 FROM telemetry;
