//! Reading the stream in its one order, from a given sequence on: all of it (live views) or
//! one partition (its writer). Reconnects and resumes after the last record read.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::record::{decode, StreamRecord};
use crate::setup::{STREAM, SUBJECT_PREFIX};
use crate::Cluster;

#[derive(Clone)]
pub struct StreamReader {
    cluster: Cluster,
}

impl StreamReader {
    pub fn new(cluster: Cluster) -> StreamReader {
        StreamReader { cluster }
    }

    /// Sends the records of `partition` (every partition when `None`) from stream sequence
    /// `from` on into `tx`, until `tx` is dropped. A record that does not decode is logged
    /// and skipped.
    pub fn follow(
        &self,
        partition: Option<u16>,
        from: u64,
        tx: mpsc::Sender<StreamRecord>,
    ) -> JoinHandle<()> {
        let cluster = self.cluster.clone();
        let filter = match partition {
            Some(p) => format!("{SUBJECT_PREFIX}{p}"),
            None => format!("{SUBJECT_PREFIX}*"),
        };
        tokio::spawn(async move {
            let mut next = from.max(1);
            loop {
                match read(&cluster, partition, &filter, &mut next, &tx).await {
                    Ok(()) => return, // the receiver is gone
                    Err(e) => {
                        tracing::warn!(error = %e, subject = %filter, from = next, "reading the stream failed; reading again in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        })
    }
}

/// How long a reader waits for its next record before it looks whether the stream has one
/// for it: a consumer that went quiet across a NATS server's failover is made anew.
const QUIET: Duration = Duration::from_secs(5);

async fn read(
    cluster: &Cluster,
    partition: Option<u16>,
    filter: &str,
    next: &mut u64,
    tx: &mpsc::Sender<StreamRecord>,
) -> Result<(), String> {
    let stream = cluster
        .jetstream
        .get_stream_no_info(STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: *next,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let message = match tokio::time::timeout(QUIET, messages.next()).await {
            Ok(Some(message)) => message.map_err(|e| e.to_string())?,
            Ok(None) => break,
            Err(_) => {
                if waiting(cluster, partition, *next).await {
                    metrics::counter!("fieldline_cluster_reader_restarts_total").increment(1);
                    return Err("the consumer went quiet with records waiting".to_owned());
                }
                continue;
            }
        };
        let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
        if seq < *next {
            continue; // already sent before a reconnect
        }
        *next = seq + 1;
        match decode(seq, message.message.payload.clone()) {
            Ok(record) => {
                if tx.send(record).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) => tracing::error!(error = %e, "skipping a stream record"),
        }
    }
    Err("the consumer ended".to_owned())
}

/// Whether the stream holds a record at or after `next` for this reader.
async fn waiting(cluster: &Cluster, partition: Option<u16>, next: u64) -> bool {
    match partition {
        Some(p) => matches!(cluster.next_in_partition(p, next).await, Ok(Some(_))),
        None => matches!(cluster.stream_bounds().await, Ok((_, last)) if last >= next),
    }
}
