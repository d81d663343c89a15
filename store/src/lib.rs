//! Storage, beneath the write path (ingest) and the read path (dashboard): the [`Store`]
//! trait and its two back ends, the rows it writes ([`batch`]) and the events and states
//! the judges derive ([`derived`]), the records history reads return, roll-ups, retention
//! and migrations.
//!
//! SQLite is the zero-setup default; PostgreSQL (with TimescaleDB when the server has it) is
//! for production. Both are reached through sqlx with runtime-checked queries, so building
//! needs no database.

pub mod access;
pub mod alarms;
pub mod batch;
pub mod channels;
pub mod commands;
pub mod derived;
pub mod events;
pub mod health;
pub mod inspect;
mod kind;
mod location;
mod log_state;
mod pg_copy;
mod postgres;
mod records;
pub mod retention;
pub mod rollups;
mod shared_reads;
mod sqlite;
mod sqlite_reader;
pub mod time_format;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::batch::Batch;
pub use kind::Kind;
pub use location::Location;

pub use access::{AccessChanges, AccessStore, ApiTokenRecord, DeviceCredential};
pub use alarms::AlarmStore;
pub use channels::{ChannelRecord, ChannelStore};
pub use commands::CommandStore;
pub use events::{Definition, Definitions, EventQuery, EventStore, WebhookRecord};
pub use postgres::PgStore;
pub use retention::{Cutoffs, Removed, RetentionStore};
pub use rollups::{Aggregate, BucketQuery, BucketRow, RollupStore};
pub use sqlite::SqliteStore;

pub mod partitions;

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("storage write did not finish within {0:?}")]
    Timeout(std::time::Duration),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("no such {0}")]
    NotFound(String),
    #[error("SQLite error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("unexpected data from the database: {0}")]
    Protocol(String),
    #[error("partition {0} is written by another node now: this node's batch is refused")]
    Fenced(u16),
    #[error("storage read interrupted: the service is shutting down")]
    ShuttingDown,
    #[error("cannot create the data directory {path}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// A device's summary row.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DeviceSummary {
    pub id: String,
    pub first_seen: String,
    pub last_seen: String,
    /// Connected to the broker now.
    pub online: bool,
    /// The newest position, as a location object, or null.
    #[schema(value_type = Option<crate::location::Location>)]
    pub location: Option<serde_json::Value>,
    /// Each metric's newest value: `{"name": {"ts": …, "value": …}}`.
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
}

/// One change of a device's status: its connection (with a reason) or a status document it
/// published (no reason).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StatusPoint {
    /// `ts` in epoch ms, for code that pages through history.
    #[serde(skip)]
    pub ts_ms: i64,
    pub ts: String,
    pub seq: Option<u64>,
    pub online: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TelemetryPoint {
    /// `ts` in epoch ms, for code that pages through history.
    #[serde(skip)]
    pub ts_ms: i64,
    pub ts: String,
    pub seq: Option<u64>,
    pub metric: String,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TrackPoint {
    /// `ts` in epoch ms, for code that pages through history.
    #[serde(skip)]
    pub ts_ms: i64,
    pub ts: String,
    pub seq: Option<u64>,
    #[serde(flatten)]
    pub location: Location,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RejectedMessage {
    pub id: i64,
    pub received_at: String,
    pub topic: String,
    pub device: Option<String>,
    pub reason: String,
    pub detail: String,
    pub payload_size: i64,
    pub payload_preview: String,
}

/// A time range query over one device, `[from, to)` in epoch ms, oldest first.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
    pub limit: u32,
}

/// The newest document of each stream, remembered to seed de-duplication after a restart.
#[derive(Debug, Clone)]
pub struct StreamSeq {
    pub device: String,
    pub kind: Kind,
    /// seq of the stream's newest document (by its time) ...
    pub seq: u64,
    /// ... and that time.
    pub ts_ms: i64,
}

/// How far storage holds the write-ahead log, and which log that is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogState {
    /// Every record up to this position is stored (0: none yet).
    pub stored_position: u64,
    /// The identity of the log those positions count in; `None` before the first log.
    pub log_id: Option<String>,
}

/// What the pipeline writes to and the API reads from; it also keeps the access registry and
/// the geofences, rules, events and webhooks, and the telemetry roll-ups.
pub trait Store:
    AccessStore
    + AlarmStore
    + ChannelStore
    + CommandStore
    + EventStore
    + RollupStore
    + RetentionStore
    + Send
    + Sync
{
    /// Writes a whole batch atomically, its derived events and states included, and opens,
    /// updates or clears the alarms of its alerts: all of it is stored, or none and an error.
    /// Returns the seq its first event was given (its events take that and the ones after
    /// it) and the alarm events, numbered after those.
    fn write_batch<'a>(&'a self, batch: &'a Batch) -> StoreFuture<'a, batch::Committed>;
    fn devices(&self) -> StoreFuture<'_, Vec<DeviceSummary>>;
    fn device<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<DeviceSummary>>;
    fn telemetry<'a>(
        &'a self,
        device: &'a str,
        metric: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<TelemetryPoint>>;
    fn track<'a>(&'a self, device: &'a str, range: Range) -> StoreFuture<'a, Vec<TrackPoint>>;
    /// Status history: connects, disconnects with their reasons, and published statuses.
    fn statuses<'a>(&'a self, device: &'a str, range: Range) -> StoreFuture<'a, Vec<StatusPoint>>;
    /// The devices whose newest stored status says they are connected (at start-up: those
    /// whose connection the restart ended).
    fn online_devices(&self) -> StoreFuture<'_, Vec<String>>;
    fn rejected(&self, limit: u32) -> StoreFuture<'_, Vec<RejectedMessage>>;
    fn stream_seqs(&self) -> StoreFuture<'_, Vec<StreamSeq>>;
    /// Which write-ahead log storage follows, and the position it holds every record up to.
    fn log_state(&self) -> StoreFuture<'_, LogState>;
    /// Records that storage now follows the log `log_id` (a new log, or the first one).
    fn set_log_id<'a>(&'a self, log_id: &'a str) -> StoreFuture<'a, ()>;
    /// Keeps the record of rejected messages to its newest `keep` entries.
    fn prune_rejected(&self, keep: u32) -> StoreFuture<'_, u64>;
    /// Cheap round trip for readiness checks.
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// Housekeeping the back end needs now and then (PostgreSQL: partitions ahead of time).
    fn maintain(&self) -> StoreFuture<'_, ()>;
    /// The database server's own background jobs and how their last runs went (TimescaleDB's
    /// policies and refreshes); none elsewhere.
    fn server_jobs(&self) -> StoreFuture<'_, Vec<health::ServerJob>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Per hypertable, chunks its columnstore policy should have compressed by now and has
    /// not (TimescaleDB); none elsewhere.
    fn uncompressed_chunks(&self) -> StoreFuture<'_, Vec<health::UncompressedChunks>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn backend(&self) -> &'static str;
    /// Cluster mode's per-partition positions; `None` where cluster mode is not supported.
    fn partitions(&self) -> Option<&dyn partitions::PartitionLog> {
        None
    }
}

/// Opens the store a URL names, creating and migrating it as needed.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_store_with(url, false, true).await
}

/// As [`open_store`]; with `power_safe_commits`, a committed batch survives a power loss too
/// (SQLite syncs every commit; PostgreSQL's own `fsync` setting decides there), which the
/// write-ahead log needs in `fsync` mode before it deletes what storage holds. Without
/// `rollups`, batches mark no minutes and bucket queries read raw rows only (for measuring
/// what roll-up maintenance costs).
pub async fn open_store_with(
    url: &str,
    power_safe_commits: bool,
    rollups: bool,
) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url, rollups).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(
            SqliteStore::open(url, power_safe_commits, rollups).await?,
        ))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}
