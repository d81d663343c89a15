//! Notification channels as storage keeps them: their settings (a JSON document the ingest
//! side reads and checks) and their position in the events outbox, with the newest delivery
//! error, exactly as a webhook keeps its own.

use crate::StoreFuture;

#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ChannelRecord {
    pub id: i64,
    pub kind: String,
    /// The channel's settings, a JSON object.
    pub settings: String,
    #[sqlx(try_from = "i64")]
    pub delivered_seq: u64,
    pub last_error: Option<String>,
    #[sqlx(rename = "last_error_at")]
    pub last_error_at_ms: Option<i64>,
    #[sqlx(rename = "created_at")]
    pub created_at_ms: i64,
}

pub(crate) const CHANNEL_COLUMNS: &str =
    "id, kind, settings, delivered_seq, last_error, last_error_at, created_at";

pub trait ChannelStore: Send + Sync {
    fn channels(&self) -> StoreFuture<'_, Vec<ChannelRecord>>;
    /// Adds a channel that starts after the newest event stored; returns it.
    fn add_channel<'a>(
        &'a self,
        kind: &'a str,
        settings: &'a str,
        now_ms: i64,
    ) -> StoreFuture<'a, ChannelRecord>;
    fn delete_channel(&self, id: i64) -> StoreFuture<'_, ()>;
    /// Records how far a channel has delivered and, when given, its newest error (an earlier
    /// error stays shown until a newer one replaces it).
    fn channel_progress<'a>(
        &'a self,
        id: i64,
        delivered_seq: u64,
        error: Option<&'a str>,
        now_ms: i64,
    ) -> StoreFuture<'a, ()>;
}

/// Implements [`ChannelStore`] for a back end `$store` (with a `pool` field) over `$db`.
macro_rules! impl_channel_store {
    ($store:ty, $db:ty) => {
        impl $crate::channels::ChannelStore for $store {
            fn channels(&self) -> $crate::StoreFuture<'_, Vec<$crate::channels::ChannelRecord>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM channels ORDER BY id",
                        $crate::channels::CHANNEL_COLUMNS
                    );
                    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .fetch_all(&self.pool)
                        .await?)
                })
            }

            fn add_channel<'a>(
                &'a self,
                kind: &'a str,
                settings: &'a str,
                now_ms: i64,
            ) -> $crate::StoreFuture<'a, $crate::channels::ChannelRecord> {
                Box::pin(async move {
                    let sql = format!(
                        "INSERT INTO channels (kind, settings, delivered_seq, created_at)
                         VALUES ($1, $2, (SELECT COALESCE(MAX(seq), 0) FROM events), $3)
                         RETURNING {}",
                        $crate::channels::CHANNEL_COLUMNS
                    );
                    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(kind)
                        .bind(settings)
                        .bind(now_ms)
                        .fetch_one(&self.pool)
                        .await?)
                })
            }

            $crate::events::delivery_position!(
                delete_channel,
                channel_progress,
                "channels",
                "channel"
            );
        }
    };
}

pub(crate) use impl_channel_store;
