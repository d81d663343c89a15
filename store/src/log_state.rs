//! How far storage holds the write-ahead log, and which log that is: the same SQL on both
//! back ends (SQLite reads `$1` as the first parameter too), written once.

/// Raises the stored position to `$1`, in a batch's transaction; never lowers it.
pub(super) const RAISE_STORED_POSITION: &str =
    "UPDATE ingest_log SET stored_position = $1 WHERE id = 1 AND stored_position < $1";

/// The [`super::Store`] methods over `ingest_log`, for a store with a `pool` field.
macro_rules! log_state_methods {
    () => {
        fn log_state(&self) -> $crate::StoreFuture<'_, $crate::LogState> {
            Box::pin(async move {
                let (position, log_id): (i64, Option<String>) =
                    sqlx::query_as("SELECT stored_position, log_id FROM ingest_log WHERE id = 1")
                        .fetch_one(&self.pool)
                        .await?;
                Ok($crate::LogState {
                    stored_position: u64::try_from(position).unwrap_or(0),
                    log_id,
                })
            })
        }

        fn set_log_id<'a>(&'a self, log_id: &'a str) -> $crate::StoreFuture<'a, ()> {
            Box::pin(async move {
                sqlx::query("UPDATE ingest_log SET log_id = $1 WHERE id = 1")
                    .bind(log_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            })
        }
    };
}

pub(super) use log_state_methods;
