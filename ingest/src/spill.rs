//! When storage falls behind, the pipeline lets go of new rows and reads them back from the
//! write-ahead log later, instead of holding them in memory or slowing devices down.
//!
//! The pipeline keeps serving live views from every message as it arrives; only storage
//! waits. A [`Backlog`] reads the logged messages back by position once the writer has room,
//! and they are decoded again with the de-duplication state the live path had when the spill
//! began, so storage gets exactly the documents the live views got.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::dedupe::Dedupe;
use crate::presence::PresenceChange;

/// One record as the log kept it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub position: u64,
    pub received_ms: i64,
    pub entry: Entry,
}

/// What a log record holds.
#[derive(Debug, Clone)]
pub enum Entry {
    Publish {
        topic: Bytes,
        payload: Bytes,
    },
    Presence(PresenceChange),
    /// A record that does not decode (logged where it was read); it moves the position on.
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read the write-ahead log back: {0}")]
pub struct BacklogError(pub String);

/// The write-ahead log, read back from a position on.
pub trait Backlog: Send {
    /// Up to `max` messages from `from` on, in position order, none past `until`. Blocking
    /// file I/O: the pipeline calls it off its async thread.
    fn read(&mut self, from: u64, until: u64, max: usize) -> Result<Vec<Logged>, BacklogError>;
}

/// Whether storage is behind the log now, and whether the log is full, for readiness
/// checks and the operator.
#[derive(Debug, Default)]
pub struct SpillState {
    spilled: AtomicBool,
    spool_full: AtomicBool,
}

impl SpillState {
    pub fn is_spilled(&self) -> bool {
        self.spilled.load(Ordering::Relaxed)
    }

    /// The log holds as much unstored data as it may: devices are being slowed down.
    pub fn is_spool_full(&self) -> bool {
        self.spool_full.load(Ordering::Relaxed)
    }

    pub fn set_spool_full(&self, full: bool) {
        self.spool_full.store(full, Ordering::Relaxed);
        metrics::gauge!("fieldline_wal_spool_full").set(if full { 1.0 } else { 0.0 });
    }

    pub(crate) fn set(&self, spilled: bool) {
        self.spilled.store(spilled, Ordering::Relaxed);
        metrics::gauge!("fieldline_pipeline_spilled").set(if spilled { 1.0 } else { 0.0 });
    }
}

/// Storage is behind: rows from `from` on are only in the log.
pub(crate) struct Spill {
    /// The next log position to read back for storage.
    pub from: u64,
    /// The live path's de-duplication state at `from`, moved along as storage catches up.
    pub dedupe: Dedupe,
    pub since: std::time::Instant,
}
