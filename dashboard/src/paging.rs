//! Keyset paging by time over one device's stored history, for the readers that walk a long
//! range a page at a time (exports, replay) instead of loading it.

use std::sync::Arc;

use fieldline_ingest::store::{Range, StatusPoint, TelemetryPoint, TrackPoint};
use fieldline_ingest::{Store, StoreError};

/// Rows per read by default: big enough to keep round trips rare, small enough to stay a few MB.
pub const PAGE_ROWS: u32 = 5_000;

/// Keyset paging by time over one device's track, telemetry or statuses. A page that ends
/// inside a run of rows with the same time stops before that time, and the next page starts
/// at it, so no row is skipped or repeated.
pub struct TimePager {
    store: Arc<dyn Store>,
    device: String,
    metric: Option<String>,
    from_ms: i64,
    to_ms: i64,
    page: u32,
}

impl TimePager {
    pub fn new(store: Arc<dyn Store>, device: &str, from_ms: i64, to_ms: i64) -> Self {
        Self {
            store,
            device: device.to_owned(),
            metric: None,
            from_ms,
            to_ms,
            page: PAGE_ROWS,
        }
    }

    pub fn metric(mut self, metric: Option<&str>) -> Self {
        self.metric = metric.map(str::to_owned);
        self
    }

    /// Rows per read (at least 2, so a page can end before its last time).
    pub fn page_rows(mut self, rows: u32) -> Self {
        self.page = rows.max(2);
        self
    }

    fn range(&self) -> Option<Range> {
        (self.from_ms < self.to_ms).then_some(Range {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            limit: self.page,
        })
    }

    /// Trims a page to whole runs of one time and moves the cursor past it; `None` at the end.
    fn keep<T>(&mut self, mut rows: Vec<T>, ts: impl Fn(&T) -> i64) -> Option<Vec<T>> {
        let (Some(first), Some(last)) = (rows.first().map(&ts), rows.last().map(&ts)) else {
            self.from_ms = self.to_ms;
            return None;
        };
        if rows.len() < self.page as usize {
            self.from_ms = self.to_ms;
        } else if first == last {
            // A whole page at one millisecond: nothing sane has more; go on after it.
            self.from_ms = last + 1;
        } else {
            self.from_ms = last;
            let before = rows.partition_point(|r| ts(r) < last);
            rows.truncate(before);
        }
        Some(rows)
    }

    pub async fn track(&mut self) -> Result<Option<Vec<TrackPoint>>, StoreError> {
        let Some(range) = self.range() else {
            return Ok(None);
        };
        let rows = self.store.track(&self.device, range).await?;
        Ok(self.keep(rows, |r| r.ts_ms))
    }

    pub async fn telemetry(&mut self) -> Result<Option<Vec<TelemetryPoint>>, StoreError> {
        let Some(range) = self.range() else {
            return Ok(None);
        };
        let rows = self
            .store
            .telemetry(&self.device, self.metric.as_deref(), range)
            .await?;
        Ok(self.keep(rows, |r| r.ts_ms))
    }

    pub async fn statuses(&mut self) -> Result<Option<Vec<StatusPoint>>, StoreError> {
        let Some(range) = self.range() else {
            return Ok(None);
        };
        let rows = self.store.statuses(&self.device, range).await?;
        Ok(self.keep(rows, |r| r.ts_ms))
    }
}
