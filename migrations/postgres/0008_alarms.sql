-- Alarms: what a dispatcher works on. An alert rule's `raised` opens one per (rule, device),
-- a repeat while it is open updates it, and people acknowledge, assign, annotate and clear it.
-- Times are epoch milliseconds.
CREATE TABLE alarms (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id         BIGINT  NOT NULL,
    device_id       TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    severity        TEXT    NOT NULL,
    -- active, acknowledged or cleared.
    state           TEXT    NOT NULL,
    -- Device time of the raise that opened it.
    raised_at       BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    -- Raises it took: 1, and one more for each repeat while open.
    count           INTEGER NOT NULL DEFAULT 1,
    metric          TEXT,
    value           DOUBLE PRECISION,
    acknowledged_by TEXT,
    acknowledged_at BIGINT,
    -- NULL with cleared_at set: the rule cleared it.
    cleared_by      TEXT,
    cleared_at      BIGINT,
    assignee        TEXT,
    -- A JSON list of {"by", "ts", "text"}.
    notes           TEXT    NOT NULL DEFAULT '[]'
);
-- One open alarm per rule and device.
CREATE UNIQUE INDEX alarms_open ON alarms (rule_id, device_id) WHERE state <> 'cleared';
CREATE INDEX alarms_device ON alarms (device_id, id);
