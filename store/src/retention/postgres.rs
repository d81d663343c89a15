//! Retention on PostgreSQL. Native partitions: whole UTC days are dropped, and what sits in
//! the default partitions, statuses and the roll-up tables is deleted in steps. TimescaleDB:
//! `drop_chunks` on the hypertables, and on the continuous aggregates when there are some.

use super::{Cutoffs, Removed, RetentionStore, STEP_ROWS};
use crate::{PgStore, StoreError, StoreFuture};

/// Rows of `table` whose `column` is before `$1` (epoch ms), one step's worth, found by a
/// LIMIT subquery (PostgreSQL has no DELETE ... LIMIT); ctid stays valid within the statement.
fn step_delete(table: &str, column: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE ctid = ANY (ARRAY(
             SELECT ctid FROM {table} WHERE {column} < {AT} LIMIT {STEP_ROWS}))"
    )
}

/// `$1` (epoch ms) as a timestamptz.
const AT: &str = "timestamptz 'epoch' + $1 * interval '1 millisecond'";

impl PgStore {
    async fn delete_step(&self, table: &str, column: &str, before: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(sqlx::AssertSqlSafe(step_delete(table, column)))
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// TimescaleDB's own retention on a hypertable or continuous aggregate: whole chunks.
    async fn drop_chunks(&self, relation: &str, before: i64) -> Result<u64, StoreError> {
        let dropped: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM drop_chunks('{relation}', older_than => {AT})"
        )))
        .bind(before)
        .fetch_one(&self.pool)
        .await?;
        Ok(dropped.max(0) as u64)
    }
}

impl RetentionStore for PgStore {
    fn expire_step(&self, cutoffs: Cutoffs) -> StoreFuture<'_, Removed> {
        Box::pin(async move {
            let mut removed = Removed::default();
            if let Some(before) = cutoffs.raw_before_ms {
                sqlx::query("DELETE FROM rollup_pending WHERE minute < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                if self.native_partitions {
                    let dropped: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT fieldline_drop_partitions_before({AT})"
                    )))
                    .bind(before)
                    .fetch_one(&self.pool)
                    .await?;
                    removed.partitions += dropped.max(0) as u64;
                    if dropped > 0 {
                        self.forget_partition_days();
                    }
                    for table in ["positions_default", "telemetry_default"] {
                        removed.rows += self.delete_step(table, "time", before).await?;
                    }
                } else {
                    for table in ["positions", "telemetry"] {
                        removed.partitions += self.drop_chunks(table, before).await?;
                    }
                }
                removed.rows += self.delete_step("statuses", "time", before).await?;
            }
            if let Some(before) = cutoffs.rollups_before_ms {
                for table in ["telemetry_1m", "telemetry_1h"] {
                    if self.continuous_aggregates {
                        removed.partitions += self.drop_chunks(table, before).await?;
                    } else {
                        removed.rows += self.delete_step(table, "bucket", before).await?;
                    }
                }
            }
            Ok(removed)
        })
    }
}
