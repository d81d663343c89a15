//! The embedded SQLite back end: one file, WAL journal, multi-row inserts in one transaction
//! per batch.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::{
    kind_from_db, location_json, metrics_for_api, metrics_json, seq_from_db, seq_to_db,
    DeviceSummary, Range, RejectedMessage, Store, StoreError, StoreFuture, StreamSeq,
    TelemetryPoint, TrackPoint,
};
use crate::batch::Batch;
use crate::time_format::format_ms;

/// Rows per INSERT statement: well under SQLite's 32,766 bound parameters at 9 columns.
const ROWS_PER_STATEMENT: usize = 1_000;

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses at most the last transactions on power loss, never
            // corrupts; FULL would cost an fsync per batch.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let path = options.get_filename();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for rows in batch.positions.chunks(ROWS_PER_STATEMENT) {
            QueryBuilder::<Sqlite>::new(
                "INSERT INTO positions (device_id, ts, seq, lat, lon, speed, heading, alt, accuracy) ",
            )
            .push_values(rows, |mut b, r| {
                b.push_bind(r.device.to_string())
                    .push_bind(r.ts_ms)
                    .push_bind(seq_to_db(r.seq))
                    .push_bind(r.lat)
                    .push_bind(r.lon)
                    .push_bind(r.speed)
                    .push_bind(r.heading)
                    .push_bind(r.alt)
                    .push_bind(r.accuracy);
            })
            .build()
            .execute(&mut *tx)
            .await?;
        }
        for rows in batch.telemetry.chunks(ROWS_PER_STATEMENT) {
            QueryBuilder::<Sqlite>::new(
                "INSERT INTO telemetry (device_id, ts, seq, metric, value) ",
            )
            .push_values(rows, |mut b, r| {
                b.push_bind(r.device.to_string())
                    .push_bind(r.ts_ms)
                    .push_bind(seq_to_db(r.seq))
                    .push_bind(r.metric.to_string())
                    .push_bind(r.value);
            })
            .build()
            .execute(&mut *tx)
            .await?;
        }
        for rows in batch.statuses.chunks(ROWS_PER_STATEMENT) {
            QueryBuilder::<Sqlite>::new("INSERT INTO statuses (device_id, ts, seq, online) ")
                .push_values(rows, |mut b, r| {
                    b.push_bind(r.device.to_string())
                        .push_bind(r.ts_ms)
                        .push_bind(seq_to_db(r.seq))
                        .push_bind(r.online);
                })
                .build()
                .execute(&mut *tx)
                .await?;
        }
        for rows in batch.rejected.chunks(ROWS_PER_STATEMENT) {
            QueryBuilder::<Sqlite>::new(
                "INSERT INTO rejected (received_at, topic, device_id, reason, detail, payload_size, payload_preview) ",
            )
            .push_values(rows, |mut b, r| {
                b.push_bind(r.received_ms)
                    .push_bind(r.topic.clone())
                    .push_bind(r.device.clone())
                    .push_bind(r.reason)
                    .push_bind(r.detail.clone())
                    .push_bind(r.payload_size as i64)
                    .push_bind(r.payload_preview.clone());
            })
            .build()
            .execute(&mut *tx)
            .await?;
        }
        upsert_devices(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn upsert_devices(tx: &mut Transaction<'_, Sqlite>, batch: &Batch) -> Result<(), StoreError> {
    let devices: Vec<_> = batch.devices.iter().collect();
    for chunk in devices.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO devices (device_id, first_seen, last_seen, last_fix_ms, last_location, last_metrics,
                                  last_seq_telemetry, last_seq_location, last_seq_status) ",
        );
        q.push_values(chunk, |mut b, (id, u)| {
            b.push_bind(id.to_string())
                .push_bind(u.last_seen_ms)
                .push_bind(u.last_seen_ms)
                .push_bind(u.location.as_ref().map(|l| l.ts_ms))
                .push_bind(u.location.as_ref().map(|l| location_json(l).to_string()))
                .push_bind(metrics_json(u).to_string())
                .push_bind(seq_to_db(u.last_seq[0]))
                .push_bind(seq_to_db(u.last_seq[1]))
                .push_bind(seq_to_db(u.last_seq[2]));
        });
        // SQLite's max() of a NULL is NULL, hence the coalesce around each one.
        q.push(
            " ON CONFLICT (device_id) DO UPDATE SET
               last_seen = max(last_seen, excluded.last_seen),
               last_location = CASE WHEN excluded.last_fix_ms IS NOT NULL
                                     AND (last_fix_ms IS NULL OR excluded.last_fix_ms >= last_fix_ms)
                                    THEN excluded.last_location ELSE last_location END,
               last_fix_ms = coalesce(max(last_fix_ms, excluded.last_fix_ms), last_fix_ms, excluded.last_fix_ms),
               last_metrics = json_patch(last_metrics, excluded.last_metrics),
               last_seq_telemetry = coalesce(max(last_seq_telemetry, excluded.last_seq_telemetry), last_seq_telemetry, excluded.last_seq_telemetry),
               last_seq_location = coalesce(max(last_seq_location, excluded.last_seq_location), last_seq_location, excluded.last_seq_location),
               last_seq_status = coalesce(max(last_seq_status, excluded.last_seq_status), last_seq_status, excluded.last_seq_status)",
        );
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

type DeviceRow = (String, i64, i64, Option<String>, Option<String>);

fn summary((id, first_seen, last_seen, location, metrics): DeviceRow) -> DeviceSummary {
    DeviceSummary {
        id,
        first_seen: format_ms(first_seen),
        last_seen: format_ms(last_seen),
        location: location.and_then(|l| serde_json::from_str(&l).ok()),
        metrics: metrics_for_api(metrics.as_deref()),
    }
}

impl Store for SqliteStore {
    fn write_batch<'a>(&'a self, batch: &'a Batch) -> StoreFuture<'a, ()> {
        Box::pin(self.write(batch))
    }

    fn devices(&self) -> StoreFuture<'_, Vec<DeviceSummary>> {
        Box::pin(async move {
            let rows: Vec<DeviceRow> = sqlx::query_as(
                "SELECT device_id, first_seen, last_seen, last_location, last_metrics FROM devices ORDER BY device_id",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(summary).collect())
        })
    }

    fn device<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<DeviceSummary>> {
        Box::pin(async move {
            let row: Option<DeviceRow> = sqlx::query_as(
                "SELECT device_id, first_seen, last_seen, last_location, last_metrics FROM devices WHERE device_id = ?",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(summary))
        })
    }

    fn telemetry<'a>(
        &'a self,
        device: &'a str,
        metric: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<TelemetryPoint>> {
        Box::pin(async move {
            let rows: Vec<(i64, Option<i64>, String, f64)> = sqlx::query_as(
                "SELECT ts, seq, metric, value FROM telemetry
                 WHERE device_id = ?1 AND (?2 IS NULL OR metric = ?2) AND ts >= ?3 AND ts < ?4
                 ORDER BY ts, metric LIMIT ?5",
            )
            .bind(device)
            .bind(metric)
            .bind(range.from_ms)
            .bind(range.to_ms)
            .bind(i64::from(range.limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(ts, seq, metric, value)| TelemetryPoint {
                    ts: format_ms(ts),
                    seq: seq_from_db(seq),
                    metric,
                    value,
                })
                .collect())
        })
    }

    fn track<'a>(&'a self, device: &'a str, range: Range) -> StoreFuture<'a, Vec<TrackPoint>> {
        Box::pin(async move {
            type Row = (
                i64,
                Option<i64>,
                f64,
                f64,
                Option<f64>,
                Option<f64>,
                Option<f64>,
                Option<f64>,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT ts, seq, lat, lon, speed, heading, alt, accuracy FROM positions
                 WHERE device_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts LIMIT ?4",
            )
            .bind(device)
            .bind(range.from_ms)
            .bind(range.to_ms)
            .bind(i64::from(range.limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(
                    |(ts, seq, lat, lon, speed, heading, alt, accuracy)| TrackPoint {
                        ts: format_ms(ts),
                        seq: seq_from_db(seq),
                        lat,
                        lon,
                        speed,
                        heading,
                        alt,
                        accuracy,
                    },
                )
                .collect())
        })
    }

    fn rejected(&self, limit: u32) -> StoreFuture<'_, Vec<RejectedMessage>> {
        Box::pin(async move {
            type Row = (
                i64,
                i64,
                String,
                Option<String>,
                String,
                String,
                i64,
                String,
            );
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, received_at, topic, device_id, reason, detail, payload_size, payload_preview
                 FROM rejected ORDER BY id DESC LIMIT ?",
            )
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(
                    |(id, at, topic, device, reason, detail, payload_size, payload_preview)| {
                        RejectedMessage {
                            id,
                            received_at: format_ms(at),
                            topic,
                            device,
                            reason,
                            detail,
                            payload_size,
                            payload_preview,
                        }
                    },
                )
                .collect())
        })
    }

    fn stream_seqs(&self) -> StoreFuture<'_, Vec<StreamSeq>> {
        Box::pin(async move {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT device_id, 'telemetry', last_seq_telemetry FROM devices WHERE last_seq_telemetry IS NOT NULL
                 UNION ALL SELECT device_id, 'location', last_seq_location FROM devices WHERE last_seq_location IS NOT NULL
                 UNION ALL SELECT device_id, 'status', last_seq_status FROM devices WHERE last_seq_status IS NOT NULL",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .filter_map(|(device, kind, seq)| {
                    Some(StreamSeq {
                        device,
                        kind: kind_from_db(&kind)?,
                        seq: seq as u64,
                    })
                })
                .collect())
        })
    }

    fn prune_rejected(&self, keep: u32) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let done =
                sqlx::query("DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - ?")
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
        Box::pin(async { Ok(()) })
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
