-- Fieldline schema for PostgreSQL.
--
-- positions and telemetry are time series: written in binary COPY batches, read as "this
-- device, this time range". They become TimescaleDB hypertables when the server offers the
-- extension (preloaded), and native daily range partitions otherwise. Each series has exactly
-- one B-tree, led by device_id and ending in time: it answers the per-device range queries,
-- and each extra index would cost a large share of the ingest rate (see DESIGN.md).

DO $$
DECLARE
    timescale boolean := false;
    partitioning text;
BEGIN
    -- TimescaleDB is used when it is installed and preloaded. Without the preload, CREATE
    -- EXTENSION raises FATAL, which ends the connection and no exception block can catch; the
    -- loader's own setting tells (NULL exactly when the library is not preloaded), and it is
    -- readable by every role, unlike shared_preload_libraries.
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('timescaledb.disable_load', true) IS NOT NULL THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            timescale := true;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'timescaledb is installed but not usable (%); using native partitions', SQLERRM;
        END;
    END IF;
    partitioning := CASE WHEN timescale THEN '' ELSE 'PARTITION BY RANGE (time)' END;

    EXECUTE format($t$
        CREATE TABLE positions (
            time      timestamptz      NOT NULL,
            device_id text             NOT NULL,
            seq       bigint,
            lat       double precision NOT NULL,
            lon       double precision NOT NULL,
            speed     double precision,
            heading   double precision,
            alt       double precision,
            accuracy  double precision
        ) %s $t$, partitioning);

    EXECUTE format($t$
        CREATE TABLE telemetry (
            time      timestamptz      NOT NULL,
            device_id text             NOT NULL,
            seq       bigint,
            metric    text             NOT NULL,
            value     double precision NOT NULL
        ) %s $t$, partitioning);

    IF timescale THEN
        PERFORM create_hypertable('positions', by_range('time', INTERVAL '1 day'));
        PERFORM create_hypertable('telemetry', by_range('time', INTERVAL '1 day'));
    ELSE
        -- Rows older than the partitions the service keeps ready (back-filled history) land here.
        CREATE TABLE positions_default PARTITION OF positions DEFAULT;
        CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
    END IF;
END
$$;

CREATE INDEX positions_device_time ON positions (device_id, time);
CREATE INDEX telemetry_device_metric_time ON telemetry (device_id, metric, time);

CREATE TABLE statuses (
    time      timestamptz NOT NULL,
    device_id text        NOT NULL,
    seq       bigint,
    online    boolean     NOT NULL
);
CREATE INDEX statuses_device_time ON statuses (device_id, time);

-- One row per device: what /api/devices shows without scanning history, and the newest seq
-- of each stream so de-duplication survives a restart. Times in epoch milliseconds.
CREATE TABLE devices (
    device_id          text PRIMARY KEY,
    first_seen         bigint NOT NULL,
    last_seen          bigint NOT NULL,
    last_fix_ms        bigint,
    last_location      jsonb,
    last_metrics       jsonb  NOT NULL DEFAULT '{}',
    -- Per kind, the seq and time (ms) of the newest document that carried a seq.
    last_seq_telemetry    bigint,
    last_seq_ts_telemetry bigint,
    last_seq_location     bigint,
    last_seq_ts_location  bigint,
    last_seq_status       bigint,
    last_seq_ts_status    bigint
);

-- Merges a batch's newest metric values into a device's, keeping for each metric the value
-- with the newer time: a back-filled reading never hides a current one.
CREATE FUNCTION fieldline_merge_metrics(old jsonb, new jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT old || coalesce(jsonb_object_agg(n.key, n.value), '{}'::jsonb)
    FROM jsonb_each(new) AS n
    WHERE NOT old ? n.key OR (n.value->>'ts_ms')::bigint >= (old->n.key->>'ts_ms')::bigint
$$;

CREATE TABLE rejected (
    id              bigserial PRIMARY KEY,
    received_at     timestamptz NOT NULL,
    topic           text        NOT NULL,
    device_id       text,
    reason          text        NOT NULL,
    detail          text        NOT NULL,
    payload_size    bigint      NOT NULL,
    payload_preview text        NOT NULL
);

-- Creates the daily partitions from yesterday to `days_ahead` days ahead, for every table
-- partitioned here. A no-op on hypertables, which TimescaleDB extends by itself.
CREATE FUNCTION fieldline_ensure_partitions(days_ahead integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    parent text;
    day date;
BEGIN
    FOREACH parent IN ARRAY ARRAY['positions', 'telemetry'] LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_partitioned_table WHERE partrelid = parent::regclass);
        FOR day IN SELECT generate_series(current_date - 1, current_date + days_ahead, interval '1 day')::date LOOP
            EXECUTE format(
                'CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                parent || '_' || to_char(day, 'YYYYMMDD'), parent,
                day::timestamptz, (day + 1)::timestamptz);
        END LOOP;
    END LOOP;
END
$$;
