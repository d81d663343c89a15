//! The PostgreSQL back end: binary COPY for data rows, one transaction per batch, on a
//! connection of its own so history queries never wait behind a write.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::migrate::Migrator;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolCopyExt, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};
use tokio::sync::Mutex;

use super::access::impl_access_store;
use super::commands::impl_command_store;
use super::events::{
    impl_event_store, state_columns, LAST_EVENT_SEQ, STATE_STILL_APPLIES, STATE_UPSERT_TAIL,
};
use super::log_state::{log_state_methods, RAISE_STORED_POSITION};
use super::pg_copy;
use super::records::{self, location_json, metrics_json, position_to_db, seq_to_db};
use super::rollups;
use super::shared_reads::shared_reads;
use super::{Range, StatusPoint, Store, StoreError, StoreFuture, TelemetryPoint, TrackPoint};
use crate::batch::{Batch, PositionRow};
use crate::derived::Derived;

/// Days of time partitions kept ready ahead of today.
const PARTITION_DAYS_AHEAD: i32 = 3;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// A batch write that takes longer has met a server that vanished without closing the
/// connection (failover, network partition); it is abandoned and retried on a new connection.
/// Batches are at most about 100,000 rows, which COPY writes in about a second.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PgStore {
    pub(crate) pool: PgPool,
    options: PgConnectOptions,
    /// The writer's dedicated connection; re-opened after an error.
    writer: Mutex<Option<PgConnection>>,
    /// The roll-ups are TimescaleDB continuous aggregates (refreshed), not tables (written).
    pub(crate) continuous_aggregates: bool,
    /// Positions and telemetry are natively partitioned by day (else TimescaleDB hypertables).
    pub(crate) native_partitions: bool,
    /// Batches mark their minutes for the roll-up task, and bucket queries use roll-ups.
    pub(crate) rollups: bool,
    /// Days (since 1970, UTC) known to have their partitions, so a batch of back-filled
    /// history gets its own instead of landing in the default partition.
    partition_days: std::sync::Mutex<HashSet<i64>>,
}

impl PgStore {
    pub async fn open(url: &str, rollups: bool) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.application_name("fieldline");
        // One direct attempt first: a pool only reports "timed out" after retrying for 30 s,
        // hiding the cause (refused, bad password, no such database).
        PgConnection::connect_with(&options).await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // Queries fail after 5 s rather than hang while the database is unreachable.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        let migrator = sqlx::migrate!("../migrations/postgres");
        // Several nodes of a cluster may start at once on one database: one sets it up.
        let mut setup = pool.acquire().await?;
        sqlx::query(SCHEMA_LOCK).execute(&mut *setup).await?;
        let migrated = async {
            repair_checksums(&pool, &migrator).await?;
            migrator.run(&mut *setup).await?;
            Ok::<(), StoreError>(())
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock(4655013)")
            .execute(&mut *setup)
            .await?;
        drop(setup);
        migrated?;
        warn_if_timescale_unused(&pool).await?;
        let continuous_aggregates: bool = sqlx::query_scalar(
            "SELECT relkind = 'v' FROM pg_class WHERE relname = 'telemetry_1m' AND relnamespace = current_schema()::regnamespace",
        )
        .fetch_optional(&pool)
        .await?
        .unwrap_or(false);
        let native_partitions: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass)",
        )
        .fetch_one(&pool)
        .await?;
        let store = Self {
            pool,
            // A batch waits at most 10 s for a lock (the outbox's, or a partition's row in
            // cluster mode): a session whose client died while it waited then ends instead
            // of holding its locks until the kernel notices the dead connection.
            options: options.options([("lock_timeout", "10s")]),
            writer: Mutex::new(None),
            continuous_aggregates,
            native_partitions,
            rollups,
            partition_days: std::sync::Mutex::new(HashSet::new()),
        };
        store.ensure_partitions().await?;
        Ok(store)
    }

    async fn ensure_partitions(&self) -> Result<(), StoreError> {
        // Nodes of a cluster do this too: one at a time, or they race on the same tables.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(4655013)")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT fieldline_ensure_partitions($1)")
            .bind(PARTITION_DAYS_AHEAD)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// After partitions were dropped: the days must be checked (and made) again.
    pub(crate) fn forget_partition_days(&self) {
        if let Ok(mut days) = self.partition_days.lock() {
            days.clear();
        }
    }

    /// The days of a batch's rows that may have no partition yet.
    fn new_days(&self, batch: &Batch) -> Vec<i64> {
        let known = self
            .partition_days
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut days: Vec<i64> = batch
            .positions
            .iter()
            .map(|r| r.ts_ms)
            .chain(batch.telemetry.iter().map(|r| r.ts_ms))
            .map(|ms| ms.div_euclid(DAY_MS))
            .filter(|day| !known.contains(day))
            .collect();
        days.sort_unstable();
        days.dedup();
        days
    }

    async fn write(&self, batch: &Batch) -> Result<crate::batch::Committed, StoreError> {
        let mut writer = self.writer.lock().await;
        let conn = match writer.as_mut() {
            Some(conn) => conn,
            None => writer.insert(PgConnection::connect_with(&self.options).await?),
        };
        let days = self.new_days(batch);
        if !days.is_empty() {
            // Its own statement before the batch: the partitions stay even if the batch fails.
            let made = sqlx::query(
                "SELECT fieldline_ensure_days(ARRAY(SELECT date 'epoch' + d::int4 FROM UNNEST($1::int8[]) AS d))",
            )
            .bind(&days)
            .execute(&mut *conn)
            .await;
            if let Err(e) = made {
                *writer = None;
                return Err(e.into());
            }
            self.partition_days
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(days);
        }
        let result =
            match tokio::time::timeout(WRITE_TIMEOUT, write_batch(conn, batch, self.rollups)).await
            {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout(WRITE_TIMEOUT)),
            };
        if result.is_err() {
            // The connection may be mid-COPY or broken; start the next attempt afresh.
            *writer = None;
        }
        result
    }
}

/// `0001_schema.sql` as first released: it tried `CREATE EXTENSION timescaledb` on servers
/// that had the extension installed but not preloaded, which is FATAL there. The fixed file
/// does the same everywhere it used to succeed, so databases made by the first one take the
/// fixed one's checksum instead of failing every start with a checksum mismatch.
const FIRST_SCHEMA_AS_RELEASED: &str = "e0ac70c1d68acb1a5f0f915b09ac4663d39859190d6a881f5ba68ef7939cae1312d5a97922bb0a3d9b0960ce53be2189";

async fn repair_checksums(pool: &PgPool, migrator: &Migrator) -> Result<(), StoreError> {
    let Some(first) = migrator.iter().find(|m| m.version == 1) else {
        return Ok(());
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if exists {
        sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 1 AND encode(checksum, 'hex') = $2",
        )
        .bind(first.checksum.as_ref())
        .bind(FIRST_SCHEMA_AS_RELEASED)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Says how to turn TimescaleDB on when the server has it installed but it is not in use.
async fn warn_if_timescale_unused(pool: &PgPool) -> Result<(), StoreError> {
    let (available, preloaded, in_use): (bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
                current_setting('timescaledb.disable_load', true) IS NOT NULL,
                EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')",
    )
    .fetch_one(pool)
    .await?;
    if available && !in_use {
        if preloaded {
            tracing::warn!("TimescaleDB is preloaded but this database was created without it: positions and telemetry use native partitions. A new database would use hypertables.");
        } else {
            tracing::warn!("TimescaleDB is installed on the server but not preloaded, so positions and telemetry use native partitions. To use it, add shared_preload_libraries = 'timescaledb' to postgresql.conf, restart PostgreSQL, and point Fieldline at a new database.");
        }
    }
    Ok(())
}

/// Held while the schema is set up or its time partitions are made (by any node).
const SCHEMA_LOCK: &str = "SELECT pg_advisory_lock(4655013)";

/// Taken before reading the newest event seq: the store writer and the command ledger both
/// add events, and seqs must follow commit order (held to the end of the transaction).
const EVENT_SEQ_LOCK: &str = "SELECT pg_advisory_xact_lock(4655012)";

/// A batch's events and changed states, in its transaction, each kind in one statement;
/// returns the seq its first event took and the alarm events its alerts caused.
async fn write_derived(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    derived: &Derived,
) -> Result<crate::batch::Committed, StoreError> {
    let mut first_seq = 0i64;
    if !derived.events.is_empty() {
        sqlx::query(EVENT_SEQ_LOCK).execute(&mut **tx).await?;
        let last: i64 = sqlx::query_scalar(LAST_EVENT_SEQ)
            .fetch_one(&mut **tx)
            .await?;
        first_seq = last + 1;
        let e = &derived.events;
        sqlx::query(
            "INSERT INTO events (seq, kind, device_id, ts, log_position, fields, stored_at)
             SELECT *, $7::int8 FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[])",
        )
        .bind((first_seq..first_seq + e.len() as i64).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.kind.as_str()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.device.to_string()).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.ts_ms).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.log_position.map(position_to_db)).collect::<Vec<_>>())
        .bind(e.iter().map(|x| x.fields_json()).collect::<Vec<_>>())
        .bind(crate::time_format::now_ms())
        .execute(&mut **tx)
        .await?;
    }
    let (upserts, deletes) = state_columns(derived);
    if !upserts.ids.is_empty() {
        let sql = format!(
            "INSERT INTO judge_state (device_id, subject, subject_id, active, since, state)
             SELECT d, s, i, a, t, st
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bool[], $5::int8[], $6::text[]) AS u(d, s, i, a, t, st)
             WHERE {STATE_STILL_APPLIES}{STATE_UPSERT_TAIL}"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&upserts.devices)
            .bind(&upserts.subjects)
            .bind(&upserts.ids)
            .bind(&upserts.active)
            .bind(&upserts.since)
            .bind(&upserts.states)
            .execute(&mut **tx)
            .await?;
    }
    if !deletes.ids.is_empty() {
        sqlx::query(
            "DELETE FROM judge_state WHERE (device_id, subject, subject_id) IN
             (SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[]))",
        )
        .bind(&deletes.devices)
        .bind(&deletes.subjects)
        .bind(&deletes.ids)
        .execute(&mut **tx)
        .await?;
    }
    Ok(crate::batch::Committed {
        first_seq: u64::try_from(first_seq).unwrap_or(0),
        alarms: PgStore::open_alarms(tx, &derived.events).await?,
    })
}

async fn write_batch(
    conn: &mut PgConnection,
    batch: &Batch,
    rollups: bool,
) -> Result<crate::batch::Committed, StoreError> {
    let mut tx = conn.begin().await?;
    if let Some(fence) = batch.fence {
        crate::partitions::check_fence(&mut tx, fence, batch.log_position).await?;
    }
    if !batch.positions.is_empty() {
        let mut copy = tx
            .copy_in_raw("COPY positions (time, device_id, seq, lat, lon, speed, heading, alt, accuracy) FROM STDIN (FORMAT binary)")
            .await?;
        copy.send(pg_copy::encode_positions(&batch.positions))
            .await?;
        copy.finish().await?;
    }
    if !batch.telemetry.is_empty() {
        let mut copy = tx
            .copy_in_raw(
                "COPY telemetry (time, device_id, seq, metric, value) FROM STDIN (FORMAT binary)",
            )
            .await?;
        copy.send(pg_copy::encode_telemetry(&batch.telemetry))
            .await?;
        copy.finish().await?;
        if rollups {
            sqlx::query(rollups::postgres::MARK_MINUTES)
                .bind(rollups::batch_minutes(&batch.telemetry))
                .execute(&mut *tx)
                .await?;
        }
    }
    if !batch.statuses.is_empty() {
        let s = &batch.statuses;
        sqlx::query(
            "INSERT INTO statuses (time, device_id, seq, online, reason)
             SELECT timestamptz 'epoch' + t * interval '1 millisecond', d, q, o, r
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::bool[], $5::text[]) AS u(t, d, q, o, r)",
        )
        .bind(s.iter().map(|r| r.ts_ms).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.device.to_string()).collect::<Vec<_>>())
        .bind(s.iter().map(|r| seq_to_db(r.seq)).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.online).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.reason).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !batch.rejected.is_empty() {
        let r = &batch.rejected;
        sqlx::query(
            "INSERT INTO rejected (received_at, topic, device_id, reason, detail, payload_size, payload_preview)
             SELECT timestamptz 'epoch' + t * interval '1 millisecond', topic, dev, reason, detail, size, preview
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::text[])
               AS u(t, topic, dev, reason, detail, size, preview)",
        )
        .bind(r.iter().map(|x| x.received_ms).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.topic.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.device.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.reason.to_owned()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.detail.clone()).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.payload_size as i64).collect::<Vec<_>>())
        .bind(r.iter().map(|x| x.payload_preview.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    upsert_devices(&mut tx, batch).await?;
    if let (Some(position), None) = (batch.log_position, batch.fence) {
        sqlx::query(RAISE_STORED_POSITION)
            .bind(position_to_db(position))
            .execute(&mut *tx)
            .await?;
    }
    let committed = write_derived(&mut tx, &batch.derived).await?;
    tx.commit().await?;
    Ok(committed)
}

async fn upsert_devices(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch,
) -> Result<(), StoreError> {
    if batch.devices.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(batch.devices.len());
    let (mut first_seen, mut last_seen) = (Vec::new(), Vec::new());
    let (mut fix_ms, mut location, mut metrics) = (Vec::new(), Vec::new(), Vec::new());
    let mut seqs: [Vec<Option<i64>>; 3] = Default::default();
    let mut seq_times: [Vec<Option<i64>>; 3] = Default::default();
    for (id, update) in &batch.devices {
        ids.push(id.to_string());
        first_seen.push(update.first_seen_ms);
        last_seen.push(update.last_seen_ms);
        fix_ms.push(update.location.as_ref().map(|l: &PositionRow| l.ts_ms));
        location.push(update.location.as_ref().map(location_json));
        metrics.push(metrics_json(update));
        for kind in 0..3 {
            seqs[kind].push(seq_to_db(update.last_seq[kind].map(|(seq, _)| seq)));
            seq_times[kind].push(update.last_seq[kind].map(|(_, ts)| ts));
        }
    }
    let [seq_t, seq_l, seq_s] = seqs;
    let [ts_t, ts_l, ts_s] = seq_times;
    // Every "newest" column keeps the value with the newer time, whatever order batches
    // (back-filled history, late redeliveries) arrive in.
    sqlx::query(
        "INSERT INTO devices AS d (device_id, first_seen, last_seen, last_fix_ms, last_location, last_metrics,
                                   last_seq_telemetry, last_seq_ts_telemetry, last_seq_location,
                                   last_seq_ts_location, last_seq_status, last_seq_ts_status)
         SELECT id, f, l, fix, loc::jsonb, m::jsonb, st, tt, sl, tl, ss, ts
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::text[], $6::text[],
                     $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[])
           AS u(id, f, l, fix, loc, m, st, tt, sl, tl, ss, ts)
         ON CONFLICT (device_id) DO UPDATE SET
           first_seen = LEAST(d.first_seen, EXCLUDED.first_seen),
           last_seen = GREATEST(d.last_seen, EXCLUDED.last_seen),
           last_location = CASE WHEN EXCLUDED.last_fix_ms >= d.last_fix_ms OR d.last_fix_ms IS NULL
                                THEN coalesce(EXCLUDED.last_location, d.last_location) ELSE d.last_location END,
           last_fix_ms = GREATEST(d.last_fix_ms, EXCLUDED.last_fix_ms),
           last_metrics = fieldline_merge_metrics(d.last_metrics, EXCLUDED.last_metrics),
           last_seq_telemetry = CASE WHEN EXCLUDED.last_seq_ts_telemetry >= d.last_seq_ts_telemetry OR d.last_seq_ts_telemetry IS NULL
                                     THEN coalesce(EXCLUDED.last_seq_telemetry, d.last_seq_telemetry) ELSE d.last_seq_telemetry END,
           last_seq_ts_telemetry = GREATEST(d.last_seq_ts_telemetry, EXCLUDED.last_seq_ts_telemetry),
           last_seq_location = CASE WHEN EXCLUDED.last_seq_ts_location >= d.last_seq_ts_location OR d.last_seq_ts_location IS NULL
                                    THEN coalesce(EXCLUDED.last_seq_location, d.last_seq_location) ELSE d.last_seq_location END,
           last_seq_ts_location = GREATEST(d.last_seq_ts_location, EXCLUDED.last_seq_ts_location),
           last_seq_status = CASE WHEN EXCLUDED.last_seq_ts_status >= d.last_seq_ts_status OR d.last_seq_ts_status IS NULL
                                  THEN coalesce(EXCLUDED.last_seq_status, d.last_seq_status) ELSE d.last_seq_status END,
           last_seq_ts_status = GREATEST(d.last_seq_ts_status, EXCLUDED.last_seq_ts_status)",
    )
    .bind(ids)
    .bind(first_seen)
    .bind(last_seen)
    .bind(fix_ms)
    .bind(location)
    .bind(metrics)
    .bind(seq_t)
    .bind(ts_t)
    .bind(seq_l)
    .bind(ts_l)
    .bind(seq_s)
    .bind(ts_s)
    .execute(&mut **tx)
    .await?;
    let (ids, online): (Vec<String>, Vec<bool>) = batch
        .devices
        .iter()
        .filter_map(|(id, u)| Some((id.to_string(), u.online?)))
        .unzip();
    if !ids.is_empty() {
        sqlx::query(
            "UPDATE devices d SET online = u.o
             FROM UNNEST($1::text[], $2::bool[]) AS u(id, o) WHERE d.device_id = u.id",
        )
        .bind(ids)
        .bind(online)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store for PgStore {
    fn write_batch<'a>(&'a self, batch: &'a Batch) -> StoreFuture<'a, crate::batch::Committed> {
        Box::pin(self.write(batch))
    }

    fn partitions(&self) -> Option<&dyn crate::partitions::PartitionLog> {
        Some(self)
    }

    fn telemetry<'a>(
        &'a self,
        device: &'a str,
        metric: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<TelemetryPoint>> {
        Box::pin(async move {
            let rows: Vec<records::TelemetryRecord> = sqlx::query_as(
                "SELECT (date_part('epoch', time) * 1000)::int8, seq, metric, value FROM telemetry
                 WHERE device_id = $1 AND ($2::text IS NULL OR metric = $2)
                   AND time >= timestamptz 'epoch' + $3 * interval '1 millisecond'
                   AND time <  timestamptz 'epoch' + $4 * interval '1 millisecond'
                 ORDER BY time, metric, seq LIMIT $5",
            )
            .bind(device)
            .bind(metric)
            .bind(range.from_ms)
            .bind(range.to_ms)
            .bind(i64::from(range.limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(records::telemetry_point).collect())
        })
    }

    fn track<'a>(&'a self, device: &'a str, range: Range) -> StoreFuture<'a, Vec<TrackPoint>> {
        Box::pin(async move {
            // Binary COPY: tracks are long, and a fix decoded row by row through sqlx costs
            // several times what PostgreSQL spends on it. COPY takes no parameters: the
            // device goes in as an escaped literal, the rest are integers.
            let sql = format!(
                "COPY (SELECT time, seq, lat, lon, speed, heading, alt, accuracy FROM positions
                       WHERE device_id = {}
                         AND time >= timestamptz 'epoch' + {} * interval '1 millisecond'
                         AND time <  timestamptz 'epoch' + {} * interval '1 millisecond'
                       ORDER BY time LIMIT {}) TO STDOUT (FORMAT binary)",
                text_literal(device),
                range.from_ms,
                range.to_ms,
                range.limit
            );
            let mut chunks = self.pool.copy_out_raw(&sql).await?;
            let mut data = Vec::new();
            while let Some(chunk) = chunks.try_next().await? {
                data.extend_from_slice(&chunk);
            }
            let rows =
                pg_copy::decode_track(&data).map_err(|e| StoreError::Protocol(e.to_string()))?;
            Ok(rows.into_iter().map(records::track_point).collect())
        })
    }

    fn statuses<'a>(&'a self, device: &'a str, range: Range) -> StoreFuture<'a, Vec<StatusPoint>> {
        Box::pin(async move {
            let rows: Vec<records::StatusRecord> = sqlx::query_as(
                "SELECT (date_part('epoch', time) * 1000)::int8, seq, online, reason
                 FROM statuses
                 WHERE device_id = $1
                   AND time >= timestamptz 'epoch' + $2 * interval '1 millisecond'
                   AND time <  timestamptz 'epoch' + $3 * interval '1 millisecond'
                 ORDER BY time LIMIT $4",
            )
            .bind(device)
            .bind(range.from_ms)
            .bind(range.to_ms)
            .bind(i64::from(range.limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(records::status_point).collect())
        })
    }

    log_state_methods!();
    // PostgreSQL keeps JSON as jsonb and time as timestamptz: both are converted here.
    shared_reads! {
        device_columns: "device_id, first_seen, last_seen, last_location::text, last_metrics::text, online",
        rejected_received_ms: "(date_part('epoch', received_at) * 1000)::int8",
    }

    fn maintain(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ensure_partitions())
    }

    fn server_jobs(&self) -> StoreFuture<'_, Vec<crate::health::ServerJob>> {
        Box::pin(async move {
            if self.native_partitions && !self.continuous_aggregates {
                return Ok(Vec::new());
            }
            // TimescaleDB 2.28's views; ids below 1000 are its own internal jobs.
            Ok(sqlx::query_as::<_, crate::health::ServerJob>(
                "SELECT j.job_id AS id, j.proc_name::text AS procedure,
                        j.hypertable_name::text AS target,
                        -- A paused job is the operator's choice, whatever its last run did.
                        COALESCE(j.scheduled AND s.last_run_status = 'Failed', false) AS failed,
                        -- Only an error of the last run: job_errors keeps a month of them.
                        (SELECT e.err_message FROM timescaledb_information.job_errors e
                          WHERE e.job_id = j.job_id AND e.finish_time >= s.last_run_started_at
                          ORDER BY e.finish_time DESC LIMIT 1) AS error,
                        -- next_start is NULL before the first run and -infinity while a run
                        -- goes on (or after one crashed): then a run that started more than
                        -- an interval ago is late. Time the server was down does not count.
                        CASE WHEN NOT j.scheduled THEN 0
                             WHEN isfinite(j.next_start)
                             THEN greatest(0, extract(epoch FROM now()
                                  - greatest(j.next_start, pg_postmaster_start_time())
                                  - j.schedule_interval))::float8
                             WHEN j.next_start = '-infinity' AND isfinite(s.last_run_started_at)
                             THEN greatest(0, extract(epoch FROM now()
                                  - greatest(s.last_run_started_at, pg_postmaster_start_time())
                                  - j.schedule_interval))::float8
                             ELSE 0 END AS overdue_s
                 FROM timescaledb_information.jobs j
                 -- One row per job even while parallel workers of a run show in its stats.
                 LEFT JOIN LATERAL (SELECT js.last_run_status, js.last_run_started_at
                                    FROM timescaledb_information.job_stats js
                                    WHERE js.job_id = j.job_id LIMIT 1) s ON true
                 WHERE j.job_id >= 1000
                 ORDER BY j.job_id",
            )
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn uncompressed_chunks(&self) -> StoreFuture<'_, Vec<crate::health::UncompressedChunks>> {
        Box::pin(async move {
            if self.native_partitions && !self.continuous_aggregates {
                return Ok(Vec::new());
            }
            // Past the policy's age (a back-filled old chunk: past its creation) by two of
            // its intervals, since runs drift by their own length. Every table with a policy
            // is listed, 0 when it keeps up.
            Ok(sqlx::query_as::<_, crate::health::UncompressedChunks>(
                "SELECT j.hypertable_name::text AS hypertable,
                        -- A run going on (or crashed) is server_jobs' to report.
                        CASE WHEN j.next_start = '-infinity' THEN 0
                             ELSE count(c.chunk_name) FILTER (WHERE NOT c.is_compressed
                                  AND greatest(c.range_end
                                               + (j.config->>'compress_after')::interval,
                                               c.chunk_creation_time)
                                      < now() - 2 * j.schedule_interval)
                        END::int8 AS chunks
                 FROM timescaledb_information.jobs j
                 LEFT JOIN timescaledb_information.chunks c
                   ON c.hypertable_schema = j.hypertable_schema
                  AND c.hypertable_name = j.hypertable_name
                 WHERE j.proc_name = 'policy_compression' AND j.scheduled
                   AND j.hypertable_name IS NOT NULL
                   AND jsonb_typeof(j.config->'compress_after') = 'string'
                 GROUP BY j.job_id, j.hypertable_name, j.next_start
                 ORDER BY 1",
            )
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

impl_access_store!(PgStore);
impl_event_store!(PgStore, sqlx::Postgres);

crate::channels::impl_channel_store!(PgStore, sqlx::Postgres);
impl_command_store!(PgStore, sqlx::Postgres, "BEGIN", EVENT_SEQ_LOCK);
crate::alarms::impl_alarm_store!(PgStore, sqlx::Postgres, "BEGIN");

/// `text` as a string literal that means the same whatever `standard_conforming_strings` is.
fn text_literal(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 3);
    quoted.push_str("E'");
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\'' => quoted.push_str("''"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::text_literal;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(text_literal("van-1"), "E'van-1'");
        assert_eq!(text_literal(r"a'b\c"), r"E'a''b\\c'");
        assert_eq!(
            text_literal(r"'; DROP TABLE positions; --\"),
            r"E'''; DROP TABLE positions; --\\'"
        );
    }
}
