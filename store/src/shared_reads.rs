//! The [`super::Store`] methods whose SQL has one shape on both back ends, written once: each
//! back end passes the fragments where its dialect differs (SQLite reads `$1` as the first
//! parameter too).

/// For a store with a `pool` field. `device_columns`: the devices row as
/// `records::DeviceRecord` reads it; `rejected_received_ms`: when a rejected message arrived,
/// in epoch milliseconds.
macro_rules! shared_reads {
    (device_columns: $device_columns:literal, rejected_received_ms: $received_ms:literal $(,)?) => {
        fn devices(&self) -> $crate::StoreFuture<'_, Vec<$crate::DeviceSummary>> {
            Box::pin(async move {
                let rows: Vec<$crate::records::DeviceRecord> = sqlx::query_as(concat!(
                    "SELECT ",
                    $device_columns,
                    " FROM devices ORDER BY device_id"
                ))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map($crate::records::device_summary).collect())
            })
        }

        fn device<'a>(
            &'a self,
            id: &'a str,
        ) -> $crate::StoreFuture<'a, Option<$crate::DeviceSummary>> {
            Box::pin(async move {
                let row: Option<$crate::records::DeviceRecord> = sqlx::query_as(concat!(
                    "SELECT ",
                    $device_columns,
                    " FROM devices WHERE device_id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map($crate::records::device_summary))
            })
        }

        fn online_devices(&self) -> $crate::StoreFuture<'_, Vec<String>> {
            Box::pin(async move {
                let ids: Vec<(String,)> =
                    sqlx::query_as("SELECT device_id FROM devices WHERE online ORDER BY device_id")
                        .fetch_all(&self.pool)
                        .await?;
                Ok(ids.into_iter().map(|(id,)| id).collect())
            })
        }

        fn rejected(&self, limit: u32) -> $crate::StoreFuture<'_, Vec<$crate::RejectedMessage>> {
            Box::pin(async move {
                let rows: Vec<$crate::records::RejectedRecord> = sqlx::query_as(concat!(
                    "SELECT id, ",
                    $received_ms,
                    ", topic, device_id, reason, detail, payload_size, payload_preview
                     FROM rejected ORDER BY id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map($crate::records::rejected_message).collect())
            })
        }

        fn stream_seqs(&self) -> $crate::StoreFuture<'_, Vec<$crate::StreamSeq>> {
            Box::pin(async move {
                let rows: Vec<$crate::records::StreamSeqRecord> = sqlx::query_as(
                    "SELECT device_id, 'telemetry', last_seq_telemetry, last_seq_ts_telemetry FROM devices
                       WHERE last_seq_telemetry IS NOT NULL AND last_seq_ts_telemetry IS NOT NULL
                     UNION ALL SELECT device_id, 'location', last_seq_location, last_seq_ts_location FROM devices
                       WHERE last_seq_location IS NOT NULL AND last_seq_ts_location IS NOT NULL
                     UNION ALL SELECT device_id, 'status', last_seq_status, last_seq_ts_status FROM devices
                       WHERE last_seq_status IS NOT NULL AND last_seq_ts_status IS NOT NULL",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().filter_map($crate::records::stream_seq).collect())
            })
        }

        fn prune_rejected(&self, keep: u32) -> $crate::StoreFuture<'_, u64> {
            Box::pin(async move {
                let done = sqlx::query(
                    "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - $1",
                )
                .bind(i64::from(keep))
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            })
        }

        fn ping(&self) -> $crate::StoreFuture<'_, ()> {
            Box::pin(async move {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            })
        }
    };
}

pub(super) use shared_reads;
