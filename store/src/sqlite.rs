//! The embedded SQLite back end: one file, WAL journal, multi-row inserts in one transaction
//! per batch.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::access::impl_access_store;
use super::commands::impl_command_store;
use super::events::{
    impl_event_store, state_columns, LAST_EVENT_SEQ, STATE_STILL_APPLIES, STATE_UPSERT_TAIL,
};
use super::log_state::{log_state_methods, RAISE_STORED_POSITION};
use super::records::{location_json, metrics_json, position_to_db, seq_to_db};
use super::rollups;
use super::shared_reads::shared_reads;
use super::sqlite_reader::HistoryReader;
use super::{Range, StatusPoint, Store, StoreError, StoreFuture, TelemetryPoint, TrackPoint};
use crate::batch::Batch;
use crate::derived::Derived;

/// Rows per multi-row statement. SQLite compiles every row of a VALUES list into its
/// program, so a statement's memory grows with its rows (about 1.2 MB at 1,000 device rows)
/// while the saving per row stops growing long before: a burst of 1,000 connecting devices
/// left megabytes of such programs behind in the allocator. At 100 rows a full chunk is
/// small, common, and stays prepared.
const ROWS_PER_STATEMENT: usize = 100;

/// Whether a multi-row statement of `rows` rows is worth keeping prepared. Every row count
/// is different SQL and sqlx keeps up to 100 prepared statements per connection: caching
/// every batch's remainder would pin one program per size. Only full chunks repeat.
fn keep_prepared(rows: usize) -> bool {
    rows == ROWS_PER_STATEMENT
}

pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
    /// Batches mark their minutes for the roll-up task, and bucket queries use roll-ups.
    pub(crate) rollups: bool,
    /// Tracks, telemetry and statuses by range: see [`HistoryReader`].
    reader: Arc<HistoryReader>,
}

impl SqliteStore {
    pub async fn open(
        url: &str,
        power_safe_commits: bool,
        rollups: bool,
    ) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses at most the last transactions on power loss, never
            // corrupts, and survives a crash of the process; FULL costs an fsync per batch,
            // which only a power-safe PUBACK (`--durability fsync`) needs.
            .synchronous(if power_safe_commits {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(Duration::from_secs(10));
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::UnsupportedUrl(format!(
                "{url} (an in-memory database loses everything at a restart: give a file path)"
            )));
        }
        let path = options.get_filename().to_path_buf();
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
        let reader = HistoryReader::new(path);
        Ok(Self {
            pool,
            rollups,
            reader,
        })
    }

    async fn write(&self, batch: &Batch) -> Result<crate::batch::Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_all(
            &mut tx,
            "INSERT INTO positions (device_id, ts, seq, lat, lon, speed, heading, alt, accuracy) ",
            &batch.positions,
            |b, r| {
                b.push_bind(r.device.to_string())
                    .push_bind(r.ts_ms)
                    .push_bind(seq_to_db(r.seq))
                    .push_bind(r.location.lat)
                    .push_bind(r.location.lon)
                    .push_bind(r.location.speed)
                    .push_bind(r.location.heading)
                    .push_bind(r.location.alt)
                    .push_bind(r.location.accuracy);
            },
        )
        .await?;
        insert_all(
            &mut tx,
            "INSERT INTO telemetry (device_id, ts, seq, metric, value) ",
            &batch.telemetry,
            |b, r| {
                b.push_bind(r.device.to_string())
                    .push_bind(r.ts_ms)
                    .push_bind(seq_to_db(r.seq))
                    .push_bind(r.metric.to_string())
                    .push_bind(r.value);
            },
        )
        .await?;
        let minutes = rollups::batch_minutes(&batch.telemetry);
        if self.rollups && !minutes.is_empty() {
            sqlx::query(rollups::sqlite::MARK_MINUTES)
                .bind(rollups::json_array(&minutes))
                .execute(&mut *tx)
                .await?;
        }
        insert_all(
            &mut tx,
            "INSERT INTO statuses (device_id, ts, seq, online, reason) ",
            &batch.statuses,
            |b, r| {
                b.push_bind(r.device.to_string())
                    .push_bind(r.ts_ms)
                    .push_bind(seq_to_db(r.seq))
                    .push_bind(r.online)
                    .push_bind(r.reason);
            },
        )
        .await?;
        insert_all(
            &mut tx,
            "INSERT INTO rejected (received_at, topic, device_id, reason, detail, payload_size, payload_preview) ",
            &batch.rejected,
            |b, r| {
                b.push_bind(r.received_ms)
                    .push_bind(r.topic.clone())
                    .push_bind(r.device.clone())
                    .push_bind(r.reason)
                    .push_bind(r.detail.clone())
                    .push_bind(r.payload_size as i64)
                    .push_bind(r.payload_preview.clone());
            },
        )
        .await?;
        upsert_devices(&mut tx, batch).await?;
        for (id, online) in batch
            .devices
            .iter()
            .filter_map(|(id, u)| Some((id, u.online?)))
        {
            sqlx::query("UPDATE devices SET online = ? WHERE device_id = ?")
                .bind(online)
                .bind(id.as_ref())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(position) = batch.log_position {
            sqlx::query(RAISE_STORED_POSITION)
                .bind(position_to_db(position))
                .execute(&mut *tx)
                .await?;
        }
        let committed = write_derived(&mut tx, &batch.derived).await?;
        tx.commit().await?;
        Ok(committed)
    }
}

/// A batch's events and changed states, in its transaction, with multi-row statements;
/// returns the seq its first event took and the alarm events its alerts caused.
async fn write_derived(
    tx: &mut Transaction<'_, Sqlite>,
    derived: &Derived,
) -> Result<crate::batch::Committed, StoreError> {
    let mut first_seq = 0i64;
    if !derived.events.is_empty() {
        let last: i64 = sqlx::query_scalar(LAST_EVENT_SEQ)
            .fetch_one(&mut **tx)
            .await?;
        first_seq = last + 1;
        let numbered: Vec<_> = (first_seq..).zip(&derived.events).collect();
        let stored_at = crate::time_format::now_ms();
        insert_all(
            tx,
            "INSERT INTO events (seq, kind, device_id, ts, log_position, fields, stored_at) ",
            &numbered,
            |b, (seq, e)| {
                b.push_bind(*seq)
                    .push_bind(e.kind.as_str())
                    .push_bind(e.device.to_string())
                    .push_bind(e.ts_ms)
                    .push_bind(e.log_position.map(position_to_db))
                    .push_bind(e.fields_json())
                    .push_bind(stored_at);
            },
        )
        .await?;
    }
    let (upserts, deletes) = state_columns(derived);
    for chunk in (0..upserts.ids.len())
        .collect::<Vec<_>>()
        .chunks(ROWS_PER_STATEMENT)
    {
        let mut q = QueryBuilder::<Sqlite>::new("WITH u(d, s, i, a, t, st) AS (");
        q.push_values(chunk, |mut b, &k| {
            b.push_bind(upserts.devices[k].clone())
                .push_bind(upserts.subjects[k])
                .push_bind(upserts.ids[k])
                .push_bind(upserts.active[k])
                .push_bind(upserts.since[k])
                .push_bind(upserts.states[k].clone());
        });
        q.push(") INSERT INTO judge_state (device_id, subject, subject_id, active, since, state) SELECT d, s, i, a, t, st FROM u WHERE ");
        q.push(STATE_STILL_APPLIES).push(STATE_UPSERT_TAIL);
        q.build()
            .persistent(keep_prepared(chunk.len()))
            .execute(&mut **tx)
            .await?;
    }
    for chunk in (0..deletes.ids.len())
        .collect::<Vec<_>>()
        .chunks(ROWS_PER_STATEMENT)
    {
        let mut q = QueryBuilder::<Sqlite>::new(
            "DELETE FROM judge_state WHERE (device_id, subject, subject_id) IN (",
        );
        q.push_values(chunk, |mut b, &k| {
            b.push_bind(deletes.devices[k].clone())
                .push_bind(deletes.subjects[k])
                .push_bind(deletes.ids[k]);
        });
        q.push(")");
        q.build()
            .persistent(keep_prepared(chunk.len()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(crate::batch::Committed {
        first_seq: u64::try_from(first_seq).unwrap_or(0),
        alarms: SqliteStore::open_alarms(tx, &derived.events).await?,
    })
}

/// Inserts `rows` with multi-row VALUES, [`ROWS_PER_STATEMENT`] at a time.
pub(crate) async fn insert_all<T>(
    tx: &mut Transaction<'_, Sqlite>,
    head: &'static str,
    rows: &[T],
    bind: impl Fn(&mut Separated<'_, Sqlite, &'static str>, &T),
) -> Result<(), StoreError> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        QueryBuilder::<Sqlite>::new(head)
            .push_values(chunk, |mut b, row| bind(&mut b, row))
            .build()
            .persistent(keep_prepared(chunk.len()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn upsert_devices(tx: &mut Transaction<'_, Sqlite>, batch: &Batch) -> Result<(), StoreError> {
    let devices: Vec<_> = batch.devices.iter().collect();
    for chunk in devices.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO devices (device_id, first_seen, last_seen, last_fix_ms, last_location, last_metrics,
                                  last_seq_telemetry, last_seq_ts_telemetry, last_seq_location,
                                  last_seq_ts_location, last_seq_status, last_seq_ts_status) ",
        );
        q.push_values(chunk, |mut b, (id, u)| {
            b.push_bind(id.to_string())
                .push_bind(u.first_seen_ms)
                .push_bind(u.last_seen_ms)
                .push_bind(u.location.as_ref().map(|l| l.ts_ms))
                .push_bind(u.location.as_ref().map(location_json))
                .push_bind(metrics_json(u));
            for newest in &u.last_seq {
                b.push_bind(seq_to_db(newest.map(|(seq, _)| seq)))
                    .push_bind(newest.map(|(_, ts)| ts));
            }
        });
        // Every "newest" column keeps the value with the newer time, whatever order batches
        // arrive in. SQLite's max() of a NULL is NULL, hence the coalesce around each one.
        q.push(
            " ON CONFLICT (device_id) DO UPDATE SET
               first_seen = min(first_seen, excluded.first_seen),
               last_seen = max(last_seen, excluded.last_seen),
               last_location = CASE WHEN excluded.last_fix_ms IS NOT NULL
                                     AND (last_fix_ms IS NULL OR excluded.last_fix_ms >= last_fix_ms)
                                    THEN excluded.last_location ELSE last_location END,
               last_fix_ms = coalesce(max(last_fix_ms, excluded.last_fix_ms), last_fix_ms, excluded.last_fix_ms),
               last_metrics = json_patch(last_metrics, (
                   SELECT json_group_object(n.key, json(n.value))
                   FROM json_each(excluded.last_metrics) AS n
                   WHERE json_extract(devices.last_metrics, '$.\"' || n.key || '\".ts_ms') IS NULL
                      OR json_extract(n.value, '$.ts_ms') >= json_extract(devices.last_metrics, '$.\"' || n.key || '\".ts_ms'))),
               last_seq_telemetry = CASE WHEN excluded.last_seq_ts_telemetry IS NOT NULL
                                          AND (last_seq_ts_telemetry IS NULL OR excluded.last_seq_ts_telemetry >= last_seq_ts_telemetry)
                                         THEN excluded.last_seq_telemetry ELSE last_seq_telemetry END,
               last_seq_ts_telemetry = coalesce(max(last_seq_ts_telemetry, excluded.last_seq_ts_telemetry), last_seq_ts_telemetry, excluded.last_seq_ts_telemetry),
               last_seq_location = CASE WHEN excluded.last_seq_ts_location IS NOT NULL
                                         AND (last_seq_ts_location IS NULL OR excluded.last_seq_ts_location >= last_seq_ts_location)
                                        THEN excluded.last_seq_location ELSE last_seq_location END,
               last_seq_ts_location = coalesce(max(last_seq_ts_location, excluded.last_seq_ts_location), last_seq_ts_location, excluded.last_seq_ts_location),
               last_seq_status = CASE WHEN excluded.last_seq_ts_status IS NOT NULL
                                       AND (last_seq_ts_status IS NULL OR excluded.last_seq_ts_status >= last_seq_ts_status)
                                      THEN excluded.last_seq_status ELSE last_seq_status END,
               last_seq_ts_status = coalesce(max(last_seq_ts_status, excluded.last_seq_ts_status), last_seq_ts_status, excluded.last_seq_ts_status)",
        );
        q.build()
            .persistent(keep_prepared(chunk.len()))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn write_batch<'a>(&'a self, batch: &'a Batch) -> StoreFuture<'a, crate::batch::Committed> {
        Box::pin(self.write(batch))
    }

    fn telemetry<'a>(
        &'a self,
        device: &'a str,
        metric: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<TelemetryPoint>> {
        Box::pin(self.reader.telemetry(device, metric, range))
    }

    fn track<'a>(&'a self, device: &'a str, range: Range) -> StoreFuture<'a, Vec<TrackPoint>> {
        Box::pin(self.reader.track(device, range))
    }

    fn statuses<'a>(&'a self, device: &'a str, range: Range) -> StoreFuture<'a, Vec<StatusPoint>> {
        Box::pin(self.reader.statuses(device, range))
    }

    log_state_methods!();
    // SQLite keeps JSON as text and time as epoch milliseconds.
    shared_reads! {
        device_columns: "device_id, first_seen, last_seen, last_location, last_metrics, online",
        rejected_received_ms: "received_at",
    }

    fn maintain(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

impl_access_store!(SqliteStore);
impl_event_store!(SqliteStore, sqlx::Sqlite);

crate::channels::impl_channel_store!(SqliteStore, sqlx::Sqlite);
// An immediate transaction holds the write lock from its start, so no other writer's events
// come between its seq read and its insert.
impl_command_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", "");
crate::alarms::impl_alarm_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE");

#[cfg(test)]
mod tests {
    use super::*;

    /// History reads open the file on connections of their own, so a database in memory
    /// would read as empty: it is refused with the reason.
    #[tokio::test]
    async fn an_in_memory_database_is_refused() {
        for url in ["sqlite::memory:", "sqlite://fl.db?mode=memory"] {
            match SqliteStore::open(url, false, true).await {
                Err(StoreError::UnsupportedUrl(why)) => assert!(why.contains("in-memory"), "{why}"),
                Err(e) => panic!("{url}: {e}"),
                Ok(_) => panic!("{url} was opened"),
            }
        }
    }
}
