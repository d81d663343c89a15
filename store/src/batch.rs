//! Rows on their way to storage, gathered so the store writes them together in one
//! transaction with the events they caused.

use std::collections::HashMap;
use std::sync::Arc;

use crate::derived::Derived;
use crate::Location;

#[derive(Clone, Debug, PartialEq)]
pub struct PositionRow {
    pub device: Arc<str>,
    pub ts_ms: i64,
    pub seq: Option<u64>,
    pub location: Location,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryRow {
    pub device: Arc<str>,
    pub ts_ms: i64,
    pub seq: Option<u64>,
    pub metric: Arc<str>,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StatusRow {
    pub device: Arc<str>,
    pub ts_ms: i64,
    pub seq: Option<u64>,
    pub online: bool,
    /// For presence changes, what caused them; see the status document's reason.
    pub reason: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RejectedRow {
    pub received_ms: i64,
    pub topic: String,
    pub device: Option<String>,
    pub reason: &'static str,
    pub detail: String,
    pub payload_size: usize,
    /// The start of the payload, as text when it is text and as hex otherwise.
    pub payload_preview: String,
}

/// What one device's documents in this batch change in its summary row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceUpdate {
    /// Receive times of the device's first and last document in the batch.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The newest position in the batch.
    pub location: Option<PositionRow>,
    /// Each metric's newest (ts, value) in the batch.
    pub metrics: HashMap<Arc<str>, (i64, f64)>,
    /// Per kind (indexed by [`crate::Kind::index`]), the seq and time of the newest document that
    /// had a seq: what de-duplication restarts from.
    pub last_seq: [Option<(u64, i64)>; 3],
    /// The device's connection state after this batch, when a connection started or ended.
    pub online: Option<bool>,
}

/// One write to storage.
#[derive(Debug, Default)]
pub struct Batch {
    pub positions: Vec<PositionRow>,
    pub telemetry: Vec<TelemetryRow>,
    pub statuses: Vec<StatusRow>,
    pub rejected: Vec<RejectedRow>,
    pub devices: HashMap<Arc<str>, DeviceUpdate>,
    /// Geofence and alert events these rows caused, and the states they changed: stored in
    /// the same transaction (the outbox).
    pub derived: Derived,
    /// Documents (not rows) in the batch, for metrics.
    pub documents: usize,
    /// The newest write-ahead log position whose message this batch (with the batches
    /// before it) covers: stored with the rows, in their transaction.
    pub log_position: Option<u64>,
    /// Cluster mode: the partition this batch belongs to and its writer's claim; the
    /// batch records its position there instead of in the local log's.
    pub fence: Option<crate::partitions::Fence>,
    /// When the oldest entry was added, to flush by age.
    pub started: Option<std::time::Instant>,
}

impl Batch {
    /// Nothing to store. A batch whose messages were all duplicates still moves the log
    /// position, so it is not empty.
    pub fn is_empty(&self) -> bool {
        self.documents == 0
            && self.rejected.is_empty()
            && self.log_position.is_none()
            && self.derived.is_empty()
    }

    /// Records that this batch covers the log up to `position`.
    pub fn cover(&mut self, position: u64) {
        self.mark_started();
        self.log_position = Some(position);
    }

    /// Rows the store will write, for sizing decisions.
    pub fn rows(&self) -> usize {
        self.positions.len() + self.telemetry.len() + self.statuses.len() + self.rejected.len()
    }

    pub fn mark_started(&mut self) {
        self.started.get_or_insert_with(std::time::Instant::now);
    }
}

/// What a stored batch gave its events: the seq of its first (the rest follow it), and the
/// alarm events its alerts caused, numbered after them.
#[derive(Debug, Default)]
pub struct Committed {
    pub first_seq: u64,
    pub alarms: Vec<crate::derived::Event>,
}
