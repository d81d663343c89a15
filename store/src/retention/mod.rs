//! Retention as storage does it: one bounded step of removing rows older than a cutoff, so
//! the caller can pause between steps and ingest never waits long behind a clean-up.

mod postgres;
mod sqlite;
pub mod sweep;

use super::StoreFuture;

/// Rows removed per statement: small enough that a step holds SQLite's writer (or a
/// PostgreSQL table's locks) for milliseconds.
pub(super) const STEP_ROWS: i64 = 5_000;

/// What to remove: raw rows (positions, telemetry, statuses) before `raw_before_ms`, roll-up
/// buckets before `rollups_before_ms`. `None` keeps that kind forever.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cutoffs {
    pub raw_before_ms: Option<i64>,
    pub rollups_before_ms: Option<i64>,
}

/// What one step removed: rows deleted and whole partitions or chunks dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Removed {
    pub rows: u64,
    pub partitions: u64,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.rows == 0 && self.partitions == 0
    }
}

pub trait RetentionStore {
    /// Removes one step of what `cutoffs` says; a step that removes nothing means done.
    ///
    /// Marked roll-up minutes older than the raw cutoff are forgotten first: their raw rows
    /// are about to go, and recomputing them from what is left would spoil good roll-ups.
    fn expire_step(&self, cutoffs: Cutoffs) -> StoreFuture<'_, Removed>;
}
