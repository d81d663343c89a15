-- The write-ahead log position that storage holds everything up to. Each batch raises it in
-- the same transaction as its rows, so after a crash the log is replayed from just past it
-- and nothing is stored twice. log_id names the log those positions count in, so a log left from
-- another database is never replayed into this one.
CREATE TABLE ingest_log (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    stored_position INTEGER NOT NULL,
    log_id TEXT
);
INSERT INTO ingest_log (id, stored_position) VALUES (1, 0);
