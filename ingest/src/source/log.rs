//! Between the write-ahead log and storage: at start, the log is replayed through the
//! pipeline before any device is accepted (what storage holds rebuilds the live history,
//! the rest is stored); while running, what storage holds and the live history no longer
//! needs is released from the log, and when storage falls behind the pipeline reads what it
//! let go of back from the log ([`LogBacklog`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldline_broker::wal::{Reader, Record, Wal};
use tokio::sync::{mpsc, watch};

use super::handover::logged;
use super::SourceError;
use crate::live::LiveFeed;
use crate::spill::{Backlog, BacklogError, Logged, SpillState};
use crate::Pipeline;

/// Records read from disk per hand-over to the pipeline.
const CHUNK: usize = 1024;

/// Replays the log into the pipeline, oldest record first: records up to `stored_position`
/// (storage holds them) rebuild the live history, and the rest are stored; returns once
/// storage holds all of them. The log is read on a blocking thread, a chunk at a time, so
/// memory holds one segment and a few chunks whatever the log's size.
pub(super) async fn replay(
    pipeline: &mut Pipeline,
    wal: Arc<Wal>,
    stored_position: u64,
    mut stored: watch::Receiver<u64>,
) -> Result<(), SourceError> {
    let started = Instant::now();
    // A log that starts past what storage holds lost records: the replay refuses it.
    let after = wal.first_position().min(stored_position + 1) - 1;
    pipeline.rebuild_live_through(stored_position);
    let (tx, mut rx) = mpsc::channel::<Vec<Record>>(4);
    let reader = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK);
        for record in wal.replay(after) {
            chunk.push(record?);
            if chunk.len() == CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok::<(), fieldline_broker::wal::WalError>(())
    });
    tracing::info!(
        from = after + 1,
        unstored_from = stored_position + 1,
        "replaying the write-ahead log: the live history, then what storage lacks"
    );
    let (mut records, mut last) = (0u64, stored_position);
    while let Some(chunk) = rx.recv().await {
        for record in chunk {
            let position = record.position;
            pipeline.replayed(&logged(record)).await;
            if position > stored_position {
                records += 1;
                last = position;
            }
        }
    }
    reader.await??;
    pipeline.flush().await;
    if records == 0 {
        return Ok(());
    }
    stored
        .wait_for(|&position| position >= last)
        .await
        .map_err(|_| SourceError::WriterStopped)?;
    tracing::info!(
        records,
        to = last,
        ms = started.elapsed().as_millis() as u64,
        "write-ahead log replayed; everything acknowledged before the restart is stored"
    );
    Ok(())
}

/// Releases from the log what storage holds and the live history no longer needs, and
/// keeps the log's backlog gauges and its full-or-not state current.
pub async fn follow_storage(
    wal: Arc<Wal>,
    mut stored: watch::Receiver<u64>,
    live: Arc<dyn LiveFeed>,
    state: Arc<SpillState>,
    spool_max_bytes: u64,
) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    let release = |position: u64| {
        let wal = wal.clone();
        let keep_from = live.oldest_held_record().unwrap_or(u64::MAX);
        // Deleting a segment is a file system call; keep it off the async threads.
        tokio::task::spawn_blocking(move || wal.release(position, keep_from))
    };
    loop {
        tokio::select! {
            changed = stored.changed() => {
                if changed.is_err() {
                    return;
                }
                let position = *stored.borrow_and_update();
                let _ = release(position).await;
            }
            _ = every_second.tick() => {
                // The history ages without new batches too.
                let position = *stored.borrow();
                let _ = release(position).await;
                wal.report_backlog();
                // A full disk with everything stored frees itself here even when no new
                // batch arrives to trigger it.
                let freeing = wal.clone();
                let _ = tokio::task::spawn_blocking(move || freeing.free_space_if_stuck()).await;
                let unstored_bytes = wal.unstored_bytes();
                let full = unstored_bytes > spool_max_bytes || wal.is_failing();
                if full != state.is_spool_full() {
                    if full {
                        tracing::warn!(spool_max_bytes, unstored_bytes, appends_failing = wal.is_failing(), "the write-ahead log is full (--spool-max-bytes of data storage does not have yet, or the disk): devices are slowed down (TCP backpressure) until storage catches up; nothing is dropped");
                    } else {
                        tracing::info!("the write-ahead log has room again; devices are read at full speed");
                    }
                    state.set_spool_full(full);
                }
            }
        }
    }
}

/// The log as the pipeline's backlog: one cursor, kept while reads go on from where the last
/// one ended.
pub struct LogBacklog {
    wal: Arc<Wal>,
    cursor: Option<(u64, Reader)>,
}

impl LogBacklog {
    pub fn new(wal: Arc<Wal>) -> Self {
        Self { wal, cursor: None }
    }
}

impl Backlog for LogBacklog {
    fn read(&mut self, from: u64, until: u64, max: usize) -> Result<Vec<Logged>, BacklogError> {
        let reader = match &mut self.cursor {
            Some((next, reader)) if *next == from => reader,
            cursor => &mut cursor.insert((from, self.wal.reader(from))).1,
        };
        let records = match reader.read(until, max) {
            Ok(records) => records,
            Err(e) => {
                // Start over from `from` next time.
                self.cursor = None;
                return Err(BacklogError(e.to_string()));
            }
        };
        if let (Some(last), Some((next, _))) = (records.last(), self.cursor.as_mut()) {
            *next = last.position + 1;
        }
        Ok(records.into_iter().map(logged).collect())
    }
}
