-- History: telemetry roll-ups (1 minute and 1 hour), the minutes whose roll-ups are out of
-- date, daily partitions made on demand (so back-filled history gets partitions retention can
-- drop), and TimescaleDB's columnstore and continuous aggregates when the server has them.
--
-- A roll-up row holds sum, min, max and count, which merge exactly. Every batch that writes
-- telemetry marks its minutes in rollup_pending (bumping `version`); the roll-up task
-- recomputes a marked minute from the raw rows and clears the mark only if no batch has
-- marked it since. Queries read raw rows for marked minutes and roll-ups for the rest, so an
-- answer is exact whatever the roll-up task has reached, late data included. Times in
-- rollup_pending are epoch milliseconds; roll-up buckets are timestamptz, as TimescaleDB's
-- continuous aggregates must have them.

CREATE TABLE rollup_pending (
    minute  bigint PRIMARY KEY,
    version bigint NOT NULL DEFAULT 0
);
INSERT INTO rollup_pending (minute)
SELECT DISTINCT (floor(extract(epoch FROM time) / 60) * 60000)::int8 FROM telemetry;

DO $$
DECLARE
    hypertables boolean := NOT EXISTS (
        SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass);
    -- Columnstore, continuous aggregates and policies are in the Timescale-licensed part.
    full_timescale boolean := current_setting('timescaledb.license', true) = 'timescale';
BEGIN
    IF hypertables AND full_timescale THEN
        EXECUTE $v$
            CREATE MATERIALIZED VIEW telemetry_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
            SELECT device_id, metric, time_bucket(INTERVAL '1 minute', time) AS bucket,
                   sum(value) AS sum, min(value) AS min, max(value) AS max, count(*) AS count
            FROM telemetry
            GROUP BY device_id, metric, time_bucket(INTERVAL '1 minute', time)
            WITH NO DATA $v$;
        EXECUTE $v$
            CREATE MATERIALIZED VIEW telemetry_1h
            WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
            SELECT device_id, metric, time_bucket(INTERVAL '1 hour', bucket) AS bucket,
                   sum(sum) AS sum, min(min) AS min, max(max) AS max, sum(count)::bigint AS count
            FROM telemetry_1m
            GROUP BY device_id, metric, time_bucket(INTERVAL '1 hour', bucket)
            WITH NO DATA $v$;
        -- Queries filter on device, metric and a bucket range; the automatic group indexes
        -- lead with one column each. Daily chunks let roll-up retention go a day at a time
        -- (an aggregate's chunks are otherwise ten times its hypertable's).
        CREATE INDEX telemetry_1m_series ON telemetry_1m (device_id, metric, bucket);
        CREATE INDEX telemetry_1h_series ON telemetry_1h (device_id, metric, bucket);
        PERFORM set_chunk_time_interval('telemetry_1m', INTERVAL '1 day');
        PERFORM set_chunk_time_interval('telemetry_1h', INTERVAL '1 day');
        -- Fieldline refreshes the minutes it has marked as soon as they close; the policies
        -- are the backstop. Their windows stay within the last hours so that a refresh never
        -- runs over raw chunks retention has dropped (which would empty those aggregates).
        PERFORM add_continuous_aggregate_policy('telemetry_1m', start_offset => INTERVAL '3 hours',
            end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 hour',
            if_not_exists => true);
        PERFORM add_continuous_aggregate_policy('telemetry_1h', start_offset => INTERVAL '4 hours',
            end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour',
            if_not_exists => true);
        EXECUTE $c$ ALTER TABLE telemetry SET (timescaledb.enable_columnstore = true,
            timescaledb.segmentby = 'device_id, metric', timescaledb.orderby = 'time') $c$;
        EXECUTE $c$ ALTER TABLE positions SET (timescaledb.enable_columnstore = true,
            timescaledb.segmentby = 'device_id', timescaledb.orderby = 'time') $c$;
        CALL add_columnstore_policy('telemetry', after => INTERVAL '3 days', if_not_exists => true);
        CALL add_columnstore_policy('positions', after => INTERVAL '3 days', if_not_exists => true);
    ELSE
        CREATE TABLE telemetry_1m (
            device_id text             NOT NULL,
            metric    text             NOT NULL,
            bucket    timestamptz      NOT NULL,
            sum       double precision NOT NULL,
            min       double precision NOT NULL,
            max       double precision NOT NULL,
            count     bigint           NOT NULL,
            PRIMARY KEY (device_id, metric, bucket)
        );
        CREATE INDEX telemetry_1m_bucket ON telemetry_1m (bucket);
        CREATE TABLE telemetry_1h (LIKE telemetry_1m INCLUDING ALL);
    END IF;
    IF NOT hypertables THEN
        -- The roll-up task reads one minute of every device at a time: BRIN finds it for a
        -- tiny fraction of a B-tree's insert cost (hypertables have a time index already).
        CREATE INDEX telemetry_time_brin ON telemetry USING brin (time);
    END IF;
END
$$;

-- Creates the daily partitions of the given days (UTC) that do not exist yet, for every table
-- partitioned here; rows of such a day already in the default partition move into it. A
-- no-op on hypertables.
CREATE FUNCTION fieldline_ensure_days(days date[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    parent text;
    day date;
    part text;
    low timestamptz;
    high timestamptz;
BEGIN
    FOREACH parent IN ARRAY ARRAY['positions', 'telemetry'] LOOP
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_partitioned_table WHERE partrelid = parent::regclass);
        FOREACH day IN ARRAY days LOOP
            part := parent || '_' || to_char(day, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            low := day::timestamp AT TIME ZONE 'UTC';
            high := (day + 1)::timestamp AT TIME ZONE 'UTC';
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', part, parent);
            EXECUTE format(
                'WITH moved AS (DELETE FROM %I WHERE time >= %L AND time < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
                parent || '_default', low, high, part);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                parent, part, low, high);
        END LOOP;
    END LOOP;
END
$$;

-- The days ahead, through the function above (days in UTC whatever the session's zone).
CREATE OR REPLACE FUNCTION fieldline_ensure_partitions(days_ahead integer) RETURNS void LANGUAGE sql AS $$
    SELECT fieldline_ensure_days(array_agg(d::date))
    FROM generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                         (now() AT TIME ZONE 'UTC')::date + days_ahead, interval '1 day') AS d
$$;

-- Drops the daily partitions wholly before `cutoff` (UTC day boundary) and returns how many.
CREATE FUNCTION fieldline_drop_partitions_before(cutoff timestamptz) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname AS name
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('positions', 'telemetry')
          AND c.relname ~ '_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') + 1 <= (cutoff AT TIME ZONE 'UTC')::date
    LOOP
        EXECUTE format('DROP TABLE %I', part.name);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
