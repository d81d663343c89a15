//! Keyset paging by time over one device's stored history, for the readers that walk a long
//! range a page at a time (exports, replay) instead of loading it.

use std::sync::Arc;

use fieldline_store::{Range, StatusPoint, StoreFuture, TelemetryPoint, TrackPoint};
use fieldline_store::{Store, StoreError};
use tokio::task::JoinHandle;

/// Rows per read by default: big enough to keep round trips rare, small enough to stay a few MB.
pub const PAGE_ROWS: u32 = 5_000;

/// A kind of stored row a [`TimePager`] reads: fixes, telemetry or statuses.
pub trait Paged: Send + Sized + 'static {
    fn ts_ms(&self) -> i64;
    fn read<'a>(
        store: &'a dyn Store,
        device: &'a str,
        metric: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<Self>>;
}

impl Paged for TrackPoint {
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn read<'a>(
        store: &'a dyn Store,
        device: &'a str,
        _: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<Self>> {
        store.track(device, range)
    }
}

impl Paged for TelemetryPoint {
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn read<'a>(
        store: &'a dyn Store,
        device: &'a str,
        metric: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<Self>> {
        store.telemetry(device, metric, range)
    }
}

impl Paged for StatusPoint {
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn read<'a>(
        store: &'a dyn Store,
        device: &'a str,
        _: Option<&'a str>,
        range: Range,
    ) -> StoreFuture<'a, Vec<Self>> {
        store.statuses(device, range)
    }
}

/// Keyset paging by time over one device's track, telemetry or statuses. A page that ends
/// inside a run of rows with the same time stops before that time, and the next page starts
/// at it, so no row is skipped or repeated.
pub struct TimePager<R: Paged> {
    store: Arc<dyn Store>,
    device: Arc<str>,
    metric: Option<Arc<str>>,
    from_ms: i64,
    to_ms: i64,
    page: u32,
    read_ahead: bool,
    /// The next page, being read while the caller works on the last one.
    ahead: Option<JoinHandle<Result<Vec<R>, StoreError>>>,
}

impl<R: Paged> TimePager<R> {
    pub fn new(store: Arc<dyn Store>, device: &str, from_ms: i64, to_ms: i64) -> Self {
        Self {
            store,
            device: device.into(),
            metric: None,
            from_ms,
            to_ms,
            page: PAGE_ROWS,
            read_ahead: false,
            ahead: None,
        }
    }

    pub fn metric(mut self, metric: Option<&str>) -> Self {
        self.metric = metric.map(Into::into);
        self
    }

    /// Rows per read (at least 2, so a page can end before its last time).
    pub fn page_rows(mut self, rows: u32) -> Self {
        self.page = rows.max(2);
        self
    }

    /// Reads each page while the caller writes out the one before: for readers that go
    /// through the whole range as fast as they can (exports), so storage and the caller
    /// work side by side. At most one page is held ahead.
    pub fn read_ahead(mut self) -> Self {
        self.read_ahead = true;
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
    fn keep(&mut self, mut rows: Vec<R>) -> Option<Vec<R>> {
        let (Some(first), Some(last)) = (rows.first().map(R::ts_ms), rows.last().map(R::ts_ms))
        else {
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
            let before = rows.partition_point(|r| r.ts_ms() < last);
            rows.truncate(before);
        }
        Some(rows)
    }

    /// The next page of rows in time order; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<R>>, StoreError> {
        let rows = match self.ahead.take() {
            Some(reading) => match reading.await {
                Ok(rows) => rows?,
                // It is aborted only on drop, so it ended by a panic: pass that on.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            None => {
                let Some(range) = self.range() else {
                    return Ok(None);
                };
                R::read(
                    self.store.as_ref(),
                    &self.device,
                    self.metric.as_deref(),
                    range,
                )
                .await?
            }
        };
        let page = self.keep(rows);
        if let (true, Some(range)) = (self.read_ahead, self.range()) {
            let (store, device, metric) =
                (self.store.clone(), self.device.clone(), self.metric.clone());
            self.ahead = Some(tokio::spawn(async move {
                R::read(store.as_ref(), &device, metric.as_deref(), range).await
            }));
        }
        Ok(page)
    }
}

impl<R: Paged> Drop for TimePager<R> {
    /// A reader that stops early (the client went away) leaves no read running.
    fn drop(&mut self) {
        if let Some(reading) = self.ahead.take() {
            reading.abort();
        }
    }
}
