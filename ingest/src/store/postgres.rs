//! The PostgreSQL back end: binary COPY for data rows, one transaction per batch, on a
//! connection of its own so history queries never wait behind a write.

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};
use tokio::sync::Mutex;

use super::pg_copy;
use super::records::{self, location_json, metrics_json, seq_to_db};
use super::{
    DeviceSummary, Range, RejectedMessage, Store, StoreError, StoreFuture, StreamSeq,
    TelemetryPoint, TrackPoint,
};
use crate::batch::{Batch, PositionRow};

/// Days of time partitions kept ready ahead of today.
const PARTITION_DAYS_AHEAD: i32 = 3;

pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    /// The writer's dedicated connection; re-opened after an error.
    writer: Mutex<Option<PgConnection>>,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.application_name("fieldline");
        // One direct attempt first: a pool only reports "timed out" after retrying for 30 s,
        // hiding the cause (refused, bad password, no such database).
        PgConnection::connect_with(&options).await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // Queries fail after 5 s rather than hang while the database is unreachable.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let store = Self {
            pool,
            options,
            writer: Mutex::new(None),
        };
        store.ensure_partitions().await?;
        Ok(store)
    }

    async fn ensure_partitions(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT fieldline_ensure_partitions($1)")
            .bind(PARTITION_DAYS_AHEAD)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().await;
        let conn = match writer.as_mut() {
            Some(conn) => conn,
            None => writer.insert(PgConnection::connect_with(&self.options).await?),
        };
        let result = write_batch(conn, batch).await;
        if result.is_err() {
            // The connection may be mid-COPY or broken; start the next attempt afresh.
            *writer = None;
        }
        result
    }
}

async fn write_batch(conn: &mut PgConnection, batch: &Batch) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
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
    }
    if !batch.statuses.is_empty() {
        let s = &batch.statuses;
        sqlx::query(
            "INSERT INTO statuses (time, device_id, seq, online)
             SELECT timestamptz 'epoch' + t * interval '1 millisecond', d, q, o
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::bool[]) AS u(t, d, q, o)",
        )
        .bind(s.iter().map(|r| r.ts_ms).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.device.to_string()).collect::<Vec<_>>())
        .bind(s.iter().map(|r| seq_to_db(r.seq)).collect::<Vec<_>>())
        .bind(s.iter().map(|r| r.online).collect::<Vec<_>>())
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
    tx.commit().await?;
    Ok(())
}

async fn upsert_devices(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch,
) -> Result<(), StoreError> {
    if batch.devices.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(batch.devices.len());
    let (mut seen, mut fix_ms, mut location, mut metrics) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seqs: [Vec<Option<i64>>; 3] = Default::default();
    for (id, update) in &batch.devices {
        ids.push(id.to_string());
        seen.push(update.last_seen_ms);
        fix_ms.push(update.location.as_ref().map(|l: &PositionRow| l.ts_ms));
        location.push(update.location.as_ref().map(location_json));
        metrics.push(metrics_json(update));
        for (kind, column) in seqs.iter_mut().enumerate() {
            column.push(seq_to_db(update.last_seq[kind]));
        }
    }
    let [seq_telemetry, seq_location, seq_status] = seqs;
    sqlx::query(
        "INSERT INTO devices AS d (device_id, first_seen, last_seen, last_fix_ms, last_location, last_metrics,
                                   last_seq_telemetry, last_seq_location, last_seq_status)
         SELECT id, seen, seen, fix, loc::jsonb, m::jsonb, st, sl, ss
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[])
           AS u(id, seen, fix, loc, m, st, sl, ss)
         ON CONFLICT (device_id) DO UPDATE SET
           last_seen = GREATEST(d.last_seen, EXCLUDED.last_seen),
           last_location = CASE WHEN EXCLUDED.last_fix_ms >= d.last_fix_ms OR d.last_fix_ms IS NULL
                                THEN coalesce(EXCLUDED.last_location, d.last_location) ELSE d.last_location END,
           last_fix_ms = GREATEST(d.last_fix_ms, EXCLUDED.last_fix_ms),
           last_metrics = d.last_metrics || EXCLUDED.last_metrics,
           last_seq_telemetry = GREATEST(d.last_seq_telemetry, EXCLUDED.last_seq_telemetry),
           last_seq_location = GREATEST(d.last_seq_location, EXCLUDED.last_seq_location),
           last_seq_status = GREATEST(d.last_seq_status, EXCLUDED.last_seq_status)",
    )
    .bind(ids)
    .bind(seen)
    .bind(fix_ms)
    .bind(location)
    .bind(metrics)
    .bind(seq_telemetry)
    .bind(seq_location)
    .bind(seq_status)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store for PgStore {
    fn write_batch<'a>(&'a self, batch: &'a Batch) -> StoreFuture<'a, ()> {
        Box::pin(self.write(batch))
    }

    fn devices(&self) -> StoreFuture<'_, Vec<DeviceSummary>> {
        Box::pin(async move {
            let rows: Vec<records::DeviceRecord> = sqlx::query_as(
                "SELECT device_id, first_seen, last_seen, last_location::text, last_metrics::text
                 FROM devices ORDER BY device_id",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(records::device_summary).collect())
        })
    }

    fn device<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<DeviceSummary>> {
        Box::pin(async move {
            let row: Option<records::DeviceRecord> = sqlx::query_as(
                "SELECT device_id, first_seen, last_seen, last_location::text, last_metrics::text
                 FROM devices WHERE device_id = $1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(records::device_summary))
        })
    }

    fn telemetry<'a>(
        &'a self,
        device: &'a str,
        metric: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<TelemetryPoint>> {
        Box::pin(async move {
            let rows: Vec<records::TelemetryRecord> = sqlx::query_as(
                "SELECT floor(extract(epoch FROM time) * 1000)::int8, seq, metric, value FROM telemetry
                 WHERE device_id = $1 AND ($2::text IS NULL OR metric = $2)
                   AND time >= timestamptz 'epoch' + $3 * interval '1 millisecond'
                   AND time <  timestamptz 'epoch' + $4 * interval '1 millisecond'
                 ORDER BY time, metric LIMIT $5",
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
            let rows: Vec<records::TrackRecord> = sqlx::query_as(
                "SELECT floor(extract(epoch FROM time) * 1000)::int8, seq, lat, lon, speed, heading, alt, accuracy
                 FROM positions
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
            Ok(rows.into_iter().map(records::track_point).collect())
        })
    }

    fn rejected(&self, limit: u32) -> StoreFuture<'_, Vec<RejectedMessage>> {
        Box::pin(async move {
            let rows: Vec<records::RejectedRecord> = sqlx::query_as(
                "SELECT id, floor(extract(epoch FROM received_at) * 1000)::int8, topic, device_id, reason, detail,
                        payload_size, payload_preview
                 FROM rejected ORDER BY id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(records::rejected_message).collect())
        })
    }

    fn stream_seqs(&self) -> StoreFuture<'_, Vec<StreamSeq>> {
        Box::pin(async move {
            let rows: Vec<records::StreamSeqRecord> = sqlx::query_as(
                "SELECT device_id, kind, seq FROM devices,
                   LATERAL (VALUES ('telemetry', last_seq_telemetry), ('location', last_seq_location),
                                   ('status', last_seq_status)) AS s(kind, seq)
                 WHERE seq IS NOT NULL",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().filter_map(records::stream_seq).collect())
        })
    }

    fn prune_rejected(&self, keep: u32) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let done =
                sqlx::query("DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - $1")
                    .bind(i64::from(keep))
                    .execute(&self.pool)
                    .await?;
            Ok(done.rows_affected())
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn maintain(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ensure_partitions())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
