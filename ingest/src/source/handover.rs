//! The broker's hand-over as the pipeline takes it: publishes and presence changes, as they
//! arrive from connections or as the write-ahead log kept them.

use fieldline_broker::presence::{Change, LOG_TOPIC};
use fieldline_broker::wal::Record;
use fieldline_broker::{Inbound, Message};

use crate::presence::PresenceChange;
use crate::spill::{Entry, Logged};
use crate::Pipeline;

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

pub(super) fn presence_change(change: &Change) -> PresenceChange {
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
