//! The broker's hand-over as the pipeline takes it: publishes and presence changes, as they
//! arrive from connections or as the write-ahead log kept them.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use fieldline_broker::presence::{Change, LOG_TOPIC};
use fieldline_broker::wal::{Record, Wal};
use fieldline_broker::{DisconnectReason, Inbound, Message};
use fieldline_ingest::presence::PresenceChange;
use fieldline_ingest::spill::{Entry, Logged};
use fieldline_ingest::Pipeline;
use fieldline_store::Store;

/// Takes one thing the tap handed over.
pub async fn feed(pipeline: &mut Pipeline, msg: Inbound) {
    match &msg.message {
        Message::Publish { topic, payload } => {
            pipeline
                .handle(topic, payload, msg.received_at, msg.position)
                .await;
        }
        Message::Presence(change) => {
            pipeline
                .presence(&presence_change(change), msg.received_at, msg.position)
                .await;
        }
    }
}

/// No connection outlives the process: every device storage still has online gets its
/// offline status (reason `dropped`) like any other end of a connection. Logged first when
/// there is a log, so storage, live views and the history rebuilt at the next start agree.
/// Returns how many devices it ended.
pub async fn end_presence_left_by_restart(
    pipeline: &mut Pipeline,
    store: &dyn Store,
    wal: Option<&Arc<Wal>>,
) -> anyhow::Result<usize> {
    let devices = store
        .online_devices()
        .await
        .context("cannot read which devices were online at the last stop")?;
    for device in &devices {
        let change = Change::Ended {
            device: Arc::from(device.as_str()),
            offline: true,
            reason: DisconnectReason::Dropped,
            will: None,
        };
        let now = SystemTime::now();
        let position = wal.and_then(|wal| {
            change
                .append_to(wal, fieldline_store::time_format::epoch_ms(now))
                // A full disk must not stop the start: stored without a log position.
                .map_err(|e| tracing::warn!(error = %e, device = %device, "cannot log the offline status a restart causes"))
                .ok()
        });
        pipeline
            .presence(&presence_change(&change), now, position)
            .await;
    }
    // Stored before any client asks: the REST API says offline from the first request.
    pipeline.flush_and_wait_stored().await;
    Ok(devices.len())
}

/// A log record as the pipeline reads it back.
pub fn logged(record: Record) -> Logged {
    let entry = if record.topic == LOG_TOPIC {
        match Change::decode(&record.payload) {
            Ok(change) => Entry::Presence(presence_change(&change)),
            Err(e) => {
                // The checksum held, so this is another version's record or a bug: skip it
                // rather than refuse the whole log.
                tracing::error!(position = record.position, error = %e, "skipping a write-ahead log record that does not decode");
                Entry::Unreadable
            }
        }
    } else {
        Entry::Publish {
            topic: record.topic,
            payload: record.payload,
        }
    };
    Logged {
        position: record.position,
        received_ms: record.received_ms,
        entry,
    }
}

fn presence_change(change: &Change) -> PresenceChange {
    match change {
        Change::Online { device } => PresenceChange::Online {
            device: device.to_string(),
        },
        Change::Ended {
            device,
            offline,
            reason,
            will,
        } => PresenceChange::Ended {
            device: device.to_string(),
            offline: *offline,
            reason: reason.as_str(),
            will: will.as_ref().map(|w| (w.topic.clone(), w.payload.clone())),
        },
    }
}
