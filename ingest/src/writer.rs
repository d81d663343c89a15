//! The store writer: takes batches from the pipeline and writes them, one at a time, retrying
//! until they are stored. Nothing handed to the writer is dropped. After each commit it hands
//! the batch's derived events, now numbered, to the event feed (the outbox's publisher).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::events::EventFeed;
use fieldline_store::batch::{Batch, Committed};
use fieldline_store::partitions::Fence;
use fieldline_store::{Store, StoreError};

/// The pipeline's end of the writer queue.
pub struct WriterHandle {
    tx: mpsc::Sender<Batch>,
    /// Batches handed over so far ...
    sent: u64,
    /// ... and written so far (the writer's count).
    written: watch::Receiver<u64>,
}

impl WriterHandle {
    /// Hands `batch` to the writer if its queue has room, and gives it back if not.
    pub(crate) fn offer(&mut self, batch: Batch) -> Option<Batch> {
        match self.tx.try_send(batch) {
            Ok(()) => {
                self.sent += 1;
                self.gauge();
                None
            }
            Err(
                mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
            ) => Some(batch),
        }
    }

    pub(crate) async fn send(&mut self, batch: Batch) {
        match self.tx.send(batch).await {
            Ok(()) => self.sent += 1,
            Err(mpsc::error::SendError(batch)) => {
                // Only when the writer task died, which it does not do on database errors.
                tracing::error!(rows = batch.rows(), "store writer is gone; batch lost");
                metrics::counter!("fieldline_storage_lost_rows_total")
                    .increment(batch.rows() as u64);
            }
        }
        self.gauge();
    }

    /// Waits until every batch handed over so far is written (or the writer is gone).
    pub(crate) async fn written(&mut self) {
        let sent = self.sent;
        let _ = self.written.wait_for(|&written| written >= sent).await;
    }

    fn gauge(&self) {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        metrics::gauge!("fieldline_writer_queue_batches").set(queued as f64);
    }
}

/// Starts the writer. It ends when every [`WriterHandle`] is dropped and its queue is written.
///
/// The watch says which write-ahead log position storage holds everything up to, starting
/// from `stored_position`; it moves after each commit that covers a newer one.
pub fn spawn_writer(
    store: Arc<dyn Store>,
    queue_batches: usize,
    stored_position: u64,
    events: Arc<dyn EventFeed>,
) -> (WriterHandle, JoinHandle<()>, watch::Receiver<u64>) {
    spawn(store, queue_batches, stored_position, events, None)
}

/// A writer for one partition of cluster mode's stream: every batch commits only while
/// `fence` is the partition's newest claim. Once one is refused the writer stops (its
/// batches belong to another node now) and its watch closes.
pub fn spawn_fenced_writer(
    store: Arc<dyn Store>,
    queue_batches: usize,
    fence: Fence,
    stored_seq: u64,
    events: Arc<dyn EventFeed>,
) -> (WriterHandle, JoinHandle<()>, watch::Receiver<u64>) {
    spawn(store, queue_batches, stored_seq, events, Some(fence))
}

fn spawn(
    store: Arc<dyn Store>,
    queue_batches: usize,
    stored_position: u64,
    events: Arc<dyn EventFeed>,
    fence: Option<Fence>,
) -> (WriterHandle, JoinHandle<()>, watch::Receiver<u64>) {
    let (tx, mut rx) = mpsc::channel::<Batch>(queue_batches.max(1));
    let (stored_tx, stored_rx) = watch::channel(stored_position);
    let (written_tx, written) = watch::channel(0u64);
    let task = tokio::spawn(async move {
        while let Some(mut batch) = rx.recv().await {
            metrics::gauge!("fieldline_writer_queue_batches").set(rx.len() as f64);
            batch.fence = fence;
            if fence.is_some() {
                hold_if_asked().await;
            }
            let Some(committed) = write_until_stored(&*store, &batch).await else {
                metrics::counter!("fieldline_cluster_fenced_commits_total").increment(1);
                tracing::warn!(
                    partition = fence.map(|f| f.partition),
                    rows = batch.rows(),
                    "another node claimed this partition: this node's batch is refused (the new writer stores it from the stream)"
                );
                return;
            };
            let log_position = batch.log_position;
            publish_events(&*events, batch, committed);
            written_tx.send_modify(|n| *n += 1);
            if let Some(position) = log_position {
                stored_tx.send_if_modified(|stored| {
                    let newer = position > *stored;
                    *stored = (*stored).max(position);
                    newer
                });
            }
        }
    });
    (
        WriterHandle {
            tx,
            sent: 0,
            written,
        },
        task,
        stored_rx,
    )
}

/// Numbers the committed events as storage did and hands them on, with the alarm events
/// their alerts caused after them.
fn publish_events(feed: &dyn EventFeed, batch: Batch, committed: Committed) {
    if batch.derived.events.is_empty() {
        return;
    }
    let pending = batch.derived.events.len();
    let events: Vec<Arc<fieldline_store::derived::Event>> = batch
        .derived
        .events
        .into_iter()
        .zip(committed.first_seq..)
        .map(|(mut event, seq)| {
            event.seq = seq;
            event.stored_ms = fieldline_store::time_format::now_ms();
            event
        })
        .chain(committed.alarms)
        .map(|event| {
            metrics::counter!("fieldline_events_total", "kind" => event.kind.as_str()).increment(1);
            Arc::new(event)
        })
        .collect();
    metrics::gauge!("fieldline_outbox_pending_events").decrement(pending as f64);
    feed.committed(&events);
}

/// Writes `batch`, retrying until it is stored; returns what its events were given, or
/// `None` when its fence refused it.
async fn write_until_stored(store: &dyn Store, batch: &Batch) -> Option<Committed> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match store.write_batch(batch).await {
            Ok(committed) => {
                let elapsed = started.elapsed();
                metrics::histogram!("fieldline_storage_write_seconds", "backend" => store.backend())
                    .record(elapsed.as_secs_f64());
                metrics::histogram!("fieldline_storage_batch_rows").record(batch.rows() as f64);
                metrics::counter!("fieldline_storage_rows_written_total", "table" => "positions")
                    .increment(batch.positions.len() as u64);
                metrics::counter!("fieldline_storage_rows_written_total", "table" => "telemetry")
                    .increment(batch.telemetry.len() as u64);
                metrics::counter!("fieldline_storage_rows_written_total", "table" => "statuses")
                    .increment(batch.statuses.len() as u64);
                metrics::counter!("fieldline_storage_rows_written_total", "table" => "rejected")
                    .increment(batch.rejected.len() as u64);
                tracing::debug!(
                    rows = batch.rows(),
                    ms = elapsed.as_millis() as u64,
                    "batch stored"
                );
                return Some(committed);
            }
            Err(StoreError::Fenced(_)) => return None,
            Err(e) => {
                metrics::counter!("fieldline_storage_write_errors_total").increment(1);
                tracing::error!(error = %e, rows = batch.rows(), retry_in_ms = backoff.as_millis() as u64,
                    "storage write failed; keeping the batch and retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// For the fencing test only: while the file `FIELDLINE_FAILPOINT_HOLD_COMMITS` names
/// exists, partition writers hold their next commit, so a test can stop the node with a
/// batch certainly under way.
async fn hold_if_asked() {
    let Some(path) = std::env::var_os("FIELDLINE_FAILPOINT_HOLD_COMMITS") else {
        return;
    };
    if std::path::Path::new(&path).exists() {
        tracing::warn!("failpoint: holding a partition's commit");
    }
    while std::path::Path::new(&path).exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
