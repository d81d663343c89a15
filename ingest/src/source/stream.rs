//! Cluster mode's source: the shared stream, read in its one order. Every node mirrors all of
//! it to its live views (so an event has the same id on every node), and each partition's
//! owner reads its partition for storage (the partition writers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fieldline_broker::wal::Record;
use fieldline_cluster::{StreamReader, StreamRecord};
use tokio::sync::{mpsc, watch};

use super::handover::logged;
use crate::live::LiveFeed;
use crate::spill::Logged;
use crate::Pipeline;

/// A stream record as the pipeline reads a log record: the stream sequence is its position.
pub fn from_stream(record: StreamRecord) -> Logged {
    logged(Record {
        position: record.seq,
        received_ms: record.received_ms,
        topic: record.topic,
        payload: record.payload,
    })
}

/// Feeds `pipeline` (a [`crate::pipeline::Role::Mirror`]) the whole stream from `from` on
/// until `shutdown`. Records up to `history_through` rebuild the live history; `live` is told
/// when they are done. `read` follows the newest sequence read.
pub async fn mirror(
    mut pipeline: Pipeline,
    reader: StreamReader,
    from: u64,
    history_through: u64,
    live: Arc<dyn LiveFeed>,
    read: Arc<AtomicU64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel(4096);
    let follower = reader.follow(None, from, tx);
    let mut rebuilding = history_through >= from;
    if !rebuilding {
        live.replayed();
    }
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(record) = rx.recv() => {
                let seq = record.seq;
                pipeline.replayed(&from_stream(record)).await;
                read.store(seq, Ordering::Relaxed);
                metrics::gauge!("fieldline_cluster_live_seq").set(seq as f64);
                if rebuilding && seq >= history_through {
                    rebuilding = false;
                    live.replayed();
                }
            }
            _ = tick.tick() => pipeline.flush_if_due().await,
        }
    }
    follower.abort();
}
