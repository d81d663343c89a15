//! Roll-ups on PostgreSQL: tables Fieldline keeps, or TimescaleDB continuous aggregates it
//! refreshes; the queries read both the same way.

use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use super::{MinuteRows, Source, HOUR_MS, MINUTE_MS};
use crate::{PgStore, StoreError};

/// Marks a batch's minutes (`$1`, ascending), in the batch's transaction.
pub(crate) const MARK_MINUTES: &str =
    "INSERT INTO rollup_pending AS p (minute) SELECT * FROM UNNEST($1::int8[])
     ON CONFLICT (minute) DO UPDATE SET version = p.version + 1";

const RAW_BUCKETS: &str = "SELECT b - b % $5, sum(value), min(value), max(value), count(*)
     FROM (SELECT (date_part('epoch', time) * 1000)::int8 AS b, value FROM telemetry
           WHERE device_id = $1 AND metric = $2
             AND time >= timestamptz 'epoch' + $3 * interval '1 millisecond'
             AND time <  timestamptz 'epoch' + $4 * interval '1 millisecond') r
     GROUP BY 1";

/// A source's buckets: `$1` device, `$2` metric, `$3`..`$4` the range, `$5` the bucket.
fn buckets_sql(source: Source) -> String {
    match source {
        Source::Raw => RAW_BUCKETS.to_owned(),
        Source::Minutes => rollup_buckets("telemetry_1m"),
        Source::Hours => rollup_buckets("telemetry_1h"),
    }
}

fn rollup_buckets(table: &str) -> String {
    format!(
        "SELECT b - b % $5, sum(sum), min(min), max(max), sum(count)::int8
         FROM (SELECT (date_part('epoch', bucket) * 1000)::int8 AS b, sum, min, max, count
               FROM {table}
               WHERE device_id = $1 AND metric = $2
                 AND bucket >= timestamptz 'epoch' + $3 * interval '1 millisecond'
                 AND bucket <  timestamptz 'epoch' + $4 * interval '1 millisecond') r
         GROUP BY 1"
    )
}

/// A read that sees one snapshot across its statements.
async fn snapshot(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

impl PgStore {
    async fn roll_up_hour(&self, hour_ms: i64, minutes: &[i64]) -> Result<usize, StoreError> {
        let (Some(&first), Some(&last)) = (minutes.first(), minutes.last()) else {
            return Ok(0);
        };
        let (from, to) = (first, last + MINUTE_MS);
        let mut read = snapshot(&self.pool).await?;
        let versions: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT minute, version FROM rollup_pending WHERE minute >= $1 AND minute < $2 ORDER BY minute",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&mut *read)
        .await?;
        let mut rows: MinuteRows = Vec::new();
        if !self.continuous_aggregates {
            rows = sqlx::query_as(
                "SELECT device_id, metric, (floor(date_part('epoch', time) / 60) * 60000)::int8,
                        sum(value), min(value), max(value), count(*)
                 FROM telemetry
                 WHERE time >= timestamptz 'epoch' + $1 * interval '1 millisecond'
                   AND time <  timestamptz 'epoch' + $2 * interval '1 millisecond'
                 GROUP BY 1, 2, 3",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&mut *read)
            .await?;
        }
        read.commit().await?;
        if versions.is_empty() {
            return Ok(0);
        }
        if self.continuous_aggregates {
            // A refresh cannot run in a transaction (nor as a prepared statement in one):
            // plain statements on their own, with the times as integer literals.
            for (view, from, to) in [
                ("telemetry_1m", from, to),
                ("telemetry_1h", hour_ms, hour_ms + HOUR_MS),
            ] {
                let sql = format!(
                    "CALL refresh_continuous_aggregate('{view}', to_timestamp({from}::float8 / 1000), to_timestamp({to}::float8 / 1000))"
                );
                match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&self.pool).await {
                    Ok(_) => {}
                    // The refresh policy's job holds an overlapping window (55P03): the
                    // minutes stay marked and the next step refreshes them.
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                        tracing::debug!(view, "continuous aggregate busy with a policy refresh");
                        return Ok(0);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // The roll-up rows first, the marks last: a batch that marks one of these minutes
        // meanwhile waits for the mark's row lock only as long as that last statement takes.
        // A minute marked again since the read keeps its mark (its version moved on), so
        // queries go on reading it from raw rows, and the next step rolls it up again.
        let mut tx = self.pool.begin().await?;
        if !self.continuous_aggregates {
            let minutes: Vec<i64> = versions.iter().map(|v| v.0).collect();
            rows.retain(|r| minutes.binary_search(&r.2).is_ok());
            replace_minutes(&mut tx, hour_ms, &minutes, &rows).await?;
        }
        let cleared = sqlx::query(
            "DELETE FROM rollup_pending p USING UNNEST($1::int8[], $2::int8[]) AS u(minute, version)
             WHERE p.minute = u.minute AND p.version = u.version",
        )
        .bind(versions.iter().map(|v| v.0).collect::<Vec<_>>())
        .bind(versions.iter().map(|v| v.1).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected() as usize;
        tx.commit().await?;
        Ok(cleared)
    }
}

/// Replaces the minutes' roll-up rows and recomputes their hour from the minutes.
async fn replace_minutes(
    tx: &mut Transaction<'_, Postgres>,
    hour_ms: i64,
    minutes: &[i64],
    rows: &MinuteRows,
) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM telemetry_1m WHERE bucket IN
           (SELECT timestamptz 'epoch' + m * interval '1 millisecond' FROM UNNEST($1::int8[]) AS m)",
    )
    .bind(minutes)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO telemetry_1m (device_id, metric, bucket, sum, min, max, count)
         SELECT d, m, timestamptz 'epoch' + b * interval '1 millisecond', s, lo, hi, c
         FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::float8[], $5::float8[], $6::float8[], $7::int8[])
           AS u(d, m, b, s, lo, hi, c)",
    )
    .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.4).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.5).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.6).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM telemetry_1h WHERE bucket = timestamptz 'epoch' + $1 * interval '1 millisecond'",
    )
    .bind(hour_ms)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO telemetry_1h (device_id, metric, bucket, sum, min, max, count)
         SELECT device_id, metric, timestamptz 'epoch' + $1 * interval '1 millisecond',
                sum(sum), min(min), max(max), sum(count)::int8
         FROM telemetry_1m
         WHERE bucket >= timestamptz 'epoch' + $1 * interval '1 millisecond'
           AND bucket <  timestamptz 'epoch' + ($1 + 3600000) * interval '1 millisecond'
         GROUP BY device_id, metric",
    )
    .bind(hour_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl_rollup_store!(PgStore, snapshot: snapshot, buckets_sql: buckets_sql);
