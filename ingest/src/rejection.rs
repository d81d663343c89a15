//! Why a message or document was not stored.

use std::fmt;

/// A reason code: stable, snake_case, used as the metric label and in `GET /api/rejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    UnknownTopic,
    InvalidDeviceId,
    PayloadTooLarge,
    EmptyPayload,
    InvalidJson,
    InvalidMsgpack,
    EmptyBatch,
    BatchTooLarge,
    InvalidDocument,
    MissingField,
    OutOfRange,
    NotFinite,
    InvalidTimestamp,
    FutureTimestamp,
    InvalidMetrics,
    /// A reply to a command that is not JSON.
    InvalidReply,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownTopic => "unknown_topic",
            Reason::InvalidReply => "invalid_reply",
            Reason::InvalidDeviceId => "invalid_device_id",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::EmptyPayload => "empty_payload",
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidMsgpack => "invalid_msgpack",
            Reason::EmptyBatch => "empty_batch",
            Reason::BatchTooLarge => "batch_too_large",
            Reason::InvalidDocument => "invalid_document",
            Reason::MissingField => "missing_field",
            Reason::OutOfRange => "out_of_range",
            Reason::NotFinite => "not_finite",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::InvalidMetrics => "invalid_metrics",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason and the detail a device developer needs to fix their payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
    /// Position in a batch, when the message was one.
    pub index: Option<usize>,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            index: None,
        }
    }

    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}
