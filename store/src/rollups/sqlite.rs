//! Roll-ups on SQLite: tables Fieldline keeps, written in short transactions so ingest never
//! waits long for the database's single writer.

use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{MinuteRows, Source, HOUR_MS, MINUTE_MS};
use crate::sqlite::insert_all;
use crate::{SqliteStore, StoreError};

/// Marks a batch's minutes (`$1`, a JSON array, ascending), in the batch's transaction.
pub(crate) const MARK_MINUTES: &str =
    "INSERT INTO rollup_pending (minute) SELECT value FROM json_each($1) WHERE true
     ON CONFLICT (minute) DO UPDATE SET version = version + 1";

/// A read transaction: SQLite's already sees one snapshot across its statements.
async fn snapshot(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
    Ok(pool.begin().await?)
}

/// A source's buckets: `$1` device, `$2` metric, `$3`..`$4` the range, `$5` the bucket.
fn buckets_sql(source: Source) -> String {
    let (table, value) = match source {
        Source::Raw => {
            return "SELECT ts - ts % $5, sum(value), min(value), max(value), count(*)
                    FROM telemetry
                    WHERE device_id = $1 AND metric = $2 AND ts >= $3 AND ts < $4
                    GROUP BY 1"
                .to_owned()
        }
        Source::Minutes => ("telemetry_1m", "bucket"),
        Source::Hours => ("telemetry_1h", "bucket"),
    };
    format!(
        "SELECT {value} - {value} % $5, sum(sum), min(min), max(max), sum(count)
         FROM {table}
         WHERE device_id = $1 AND metric = $2 AND {value} >= $3 AND {value} < $4
         GROUP BY 1"
    )
}

impl SqliteStore {
    async fn roll_up_hour(&self, hour_ms: i64, minutes: &[i64]) -> Result<usize, StoreError> {
        let (Some(&first), Some(&last)) = (minutes.first(), minutes.last()) else {
            return Ok(0);
        };
        let (from, to) = (first, last + MINUTE_MS);
        // One read transaction: the marks and the rows come from the same snapshot.
        let mut read = self.pool.begin().await?;
        let versions: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT minute, version FROM rollup_pending WHERE minute >= $1 AND minute < $2 ORDER BY minute",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *read)
        .await?;
        let mut rows: MinuteRows = sqlx::query_as(
            "SELECT device_id, metric, ts - ts % 60000, sum(value), min(value), max(value), count(*)
             FROM telemetry WHERE ts >= $1 AND ts < $2
             GROUP BY 1, 2, 3",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *read)
        .await?;
        read.commit().await?;
        if versions.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let mut cleared = Vec::with_capacity(versions.len());
        for (minute, version) in versions {
            let done = sqlx::query("DELETE FROM rollup_pending WHERE minute = $1 AND version = $2")
                .bind(minute)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 1 {
                cleared.push(minute);
            }
        }
        if cleared.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        rows.retain(|r| cleared.binary_search(&r.2).is_ok());
        for minute in &cleared {
            sqlx::query("DELETE FROM telemetry_1m WHERE bucket = $1")
                .bind(minute)
                .execute(&mut *tx)
                .await?;
        }
        insert_all(
            &mut tx,
            "INSERT INTO telemetry_1m (device_id, metric, bucket, sum, min, max, count) ",
            &rows,
            |b, r| {
                b.push_bind(r.0.clone())
                    .push_bind(r.1.clone())
                    .push_bind(r.2)
                    .push_bind(r.3)
                    .push_bind(r.4)
                    .push_bind(r.5)
                    .push_bind(r.6);
            },
        )
        .await?;
        sqlx::query("DELETE FROM telemetry_1h WHERE bucket = $1")
            .bind(hour_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO telemetry_1h (device_id, metric, bucket, sum, min, max, count)
             SELECT device_id, metric, $1, sum(sum), min(min), max(max), sum(count)
             FROM telemetry_1m WHERE bucket >= $1 AND bucket < $2
             GROUP BY device_id, metric",
        )
        .bind(hour_ms)
        .bind(hour_ms + HOUR_MS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(cleared.len())
    }
}

impl_rollup_store!(SqliteStore, snapshot: snapshot, buckets_sql: buckets_sql);
