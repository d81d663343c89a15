//! Retention on PostgreSQL. Native partitions: whole UTC days are dropped, and what sits in
//! the default partitions, statuses and the roll-up tables is deleted in steps. TimescaleDB:
//! `drop_chunks` on the hypertables, and on the continuous aggregates when there are some.

use super::{Cutoffs, Removed, RetentionStore, STEP_ROWS};
use crate::store::{PgStore, StoreFuture};

/// Deletes one step of `table` rows whose `column` is before `$1`, found by a LIMIT subquery
/// (PostgreSQL has no DELETE ... LIMIT); ctid stays valid within the statement.
fn step_delete(table: &str, column: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE ctid = ANY (ARRAY(
             SELECT ctid FROM {table} WHERE {column} < timestamptz 'epoch' + $1 * interval '1 millisecond' LIMIT {STEP_ROWS}))"
    )
}

impl RetentionStore for PgStore {
    fn expire_step(&self, cutoffs: Cutoffs) -> StoreFuture<'_, Removed> {
        Box::pin(async move {
            let mut removed = Removed::default();
            let at = "timestamptz 'epoch' + $1 * interval '1 millisecond'";
            if let Some(before) = cutoffs.raw_before_ms {
                sqlx::query("DELETE FROM rollup_pending WHERE minute < $1")
                    .bind(before)
                    .execute(&self.pool)
                    .await?;
                if self.native_partitions {
                    let dropped: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT fieldline_drop_partitions_before({at})"
                    )))
                    .bind(before)
                    .fetch_one(&self.pool)
                    .await?;
                    removed.partitions += dropped.max(0) as u64;
                    if dropped > 0 {
                        self.forget_partition_days();
                    }
                    for table in ["positions_default", "telemetry_default"] {
                        removed.rows +=
                            sqlx::query(sqlx::AssertSqlSafe(step_delete(table, "time")))
                                .bind(before)
                                .execute(&self.pool)
                                .await?
                                .rows_affected();
                    }
                } else {
                    for table in ["positions", "telemetry"] {
                        let dropped: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                            "SELECT count(*) FROM drop_chunks('{table}', older_than => {at})"
                        )))
                        .bind(before)
                        .fetch_one(&self.pool)
                        .await?;
                        removed.partitions += dropped.max(0) as u64;
                    }
                }
                removed.rows += sqlx::query(sqlx::AssertSqlSafe(step_delete("statuses", "time")))
                    .bind(before)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            if let Some(before) = cutoffs.rollups_before_ms {
                for table in ["telemetry_1m", "telemetry_1h"] {
                    if self.continuous_aggregates {
                        let dropped: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                            "SELECT count(*) FROM drop_chunks('{table}', older_than => {at})"
                        )))
                        .bind(before)
                        .fetch_one(&self.pool)
                        .await?;
                        removed.partitions += dropped.max(0) as u64;
                    } else {
                        removed.rows +=
                            sqlx::query(sqlx::AssertSqlSafe(step_delete(table, "bucket")))
                                .bind(before)
                                .execute(&self.pool)
                                .await?
                                .rows_affected();
                    }
                }
            }
            Ok(removed)
        })
    }
}
