//! The stream as the log behind PUBACK: a node publishes what its connections read, many
//! publishes in flight at once, and acknowledges a device only once the stream has acked.
//! Each record carries a message id that stays the same when its publish is retried, so the
//! stream keeps it once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::ErrorCode;
use bytes::Bytes;

use crate::setup::SUBJECT_PREFIX;
use crate::Cluster;

/// Why a publish was not taken: the node is stopping, or the stream could not take it
/// within [`GIVE_UP`].
#[derive(Debug, thiserror::Error)]
#[error("the cluster log is closed or did not take the records in time")]
pub struct LogClosed;

/// How long records are offered again before the device is refused (its connection closed,
/// nothing acknowledged): well inside the stream's duplicate window, so a retry of a record
/// that was stored after all is still recognised.
const GIVE_UP: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct StreamLog {
    cluster: Cluster,
    next_id: Arc<AtomicU64>,
    closed: Arc<AtomicBool>,
    latency: metrics::Histogram,
    failures: metrics::Counter,
}

impl StreamLog {
    pub fn new(cluster: Cluster) -> StreamLog {
        StreamLog {
            cluster,
            next_id: Arc::new(AtomicU64::new(1)),
            closed: Arc::new(AtomicBool::new(false)),
            latency: metrics::histogram!("fieldline_cluster_publish_seconds"),
            failures: metrics::counter!("fieldline_cluster_publish_failures_total"),
        }
    }

    /// Refuses every later append, and ends those retrying now.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    pub fn partitions(&self) -> u16 {
        self.cluster.settings.partitions
    }

    /// Publishes `records` (`(partition, encoded record)`, in order) and waits until the
    /// stream holds every one; returns the last one's stream sequence. While the stream
    /// cannot take them (no quorum, full) it offers them again, from the first one not taken
    /// and with the same message ids (so those taken are kept once, in order), until it can,
    /// the log is closed, or [`GIVE_UP`] has passed.
    pub async fn append(&self, records: Vec<(u16, Bytes)>) -> Result<u64, LogClosed> {
        let first = self
            .next_id
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut pending: Vec<(usize, u16, Bytes)> = records
            .into_iter()
            .enumerate()
            .map(|(i, (partition, bytes))| (i, partition, bytes))
            .collect();
        let mut last_seq = 0u64;
        let mut backoff = Duration::from_millis(50);
        let started = Instant::now();
        loop {
            if self.closed.load(Ordering::Relaxed) || started.elapsed() > GIVE_UP {
                return Err(LogClosed);
            }
            let mut acks: Vec<(usize, Option<PublishAckFuture>)> =
                Vec::with_capacity(pending.len());
            for (i, partition, bytes) in &pending {
                let message = PublishMessage::build()
                    .payload(bytes.clone())
                    .message_id(format!("{}-{}", self.cluster.node_id, first + *i as u64));
                let sent = self
                    .cluster
                    .jetstream
                    .send_publish(format!("{SUBJECT_PREFIX}{partition}"), message)
                    .await;
                acks.push((*i, sent.ok()));
            }
            let mut failed = Vec::new();
            let mut error = None;
            let mut no_room = false;
            for (i, ack) in acks {
                let acked = match ack {
                    Some(ack) => ack.await.map_err(|e| (refused_for_room(&e), e.to_string())),
                    None => Err((false, "not sent".to_owned())),
                };
                match acked {
                    Ok(ack) => last_seq = last_seq.max(ack.sequence),
                    Err((full, e)) => {
                        failed.push(i);
                        no_room |= full;
                        error = Some(e);
                    }
                }
            }
            if failed.is_empty() {
                self.cluster.note_quorum(true);
                self.cluster.note_stream_full(false);
                self.latency.record(started.elapsed().as_secs_f64());
                return Ok(last_seq);
            }
            self.failures.increment(failed.len() as u64);
            // The stream's leader answered "no room": the quorum is there, the room is not.
            if no_room {
                self.cluster.note_stream_full(true);
            } else {
                self.cluster.note_quorum(false);
            }
            tracing::warn!(error = ?error, records = failed.len(), retry_in_ms = backoff.as_millis() as u64, "the stream did not take records; retrying (devices are not acknowledged meanwhile)");
            let first_failed = failed.iter().min().copied().unwrap_or(0);
            pending.retain(|(i, _, _)| *i >= first_failed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Whether the stream refused a record because it could not store it: with `DiscardNew`, a
/// stream at its byte limit answers so (error code 10077, "maximum bytes exceeded").
fn refused_for_room(error: &PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| e.error_code() == ErrorCode::STREAM_STORE_FAILED)
}
