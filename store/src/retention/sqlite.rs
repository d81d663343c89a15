//! Retention on SQLite: deletes in steps of a few thousand rows, each its own short
//! transaction; telemetry through its time index, positions and statuses per device through
//! theirs (a time index on them would cost every insert). The roll-up tables have no rowid:
//! their keys name the rows.

use super::{Cutoffs, Removed, RetentionStore, STEP_ROWS};
use crate::{SqliteStore, StoreFuture};

impl RetentionStore for SqliteStore {
    fn expire_step(&self, cutoffs: Cutoffs) -> StoreFuture<'_, Removed> {
        Box::pin(async move {
            let mut rows = 0;
            if let Some(before) = cutoffs.raw_before_ms {
                sqlx::query("DELETE FROM rollup_pending WHERE minute < ?")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                rows += sqlx::query(
                    "DELETE FROM telemetry WHERE rowid IN
                     (SELECT rowid FROM telemetry WHERE ts < ?1 LIMIT ?2)",
                )
                .bind(before)
                .bind(STEP_ROWS)
                .execute(&self.pool)
                .await?
                .rows_affected();
                let devices: Vec<String> = sqlx::query_scalar("SELECT device_id FROM devices")
                    .fetch_all(&self.pool)
                    .await?;
                for table in ["positions", "statuses"] {
                    let sql = format!(
                        "DELETE FROM {table} WHERE rowid IN
                         (SELECT rowid FROM {table} WHERE device_id = ?1 AND ts < ?2 LIMIT ?3)"
                    );
                    for device in &devices {
                        rows += sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                            .bind(device)
                            .bind(before)
                            .bind(STEP_ROWS)
                            .execute(&self.pool)
                            .await?
                            .rows_affected();
                    }
                }
            }
            if let Some(before) = cutoffs.rollups_before_ms {
                for table in ["telemetry_1m", "telemetry_1h"] {
                    let sql = format!(
                        "DELETE FROM {table} WHERE (device_id, metric, bucket) IN
                         (SELECT device_id, metric, bucket FROM {table} WHERE bucket < ?1 LIMIT ?2)"
                    );
                    rows += sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(before)
                        .bind(STEP_ROWS)
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                }
            }
            Ok(Removed {
                rows,
                partitions: 0,
            })
        })
    }
}
