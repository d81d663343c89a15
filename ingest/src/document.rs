//! The documents devices send, once decoded and validated.

use std::sync::Arc;

pub use fieldline_store::Kind;

/// Device ids and metric names share the same rule: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A sensor reading value; booleans are stored as 0 and 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    pub metrics: Vec<Metric>,
}

pub use fieldline_store::Location;

#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub online: bool,
    /// Set when the broker, not the device, reports this status: `connect` for a connection
    /// it accepted, and for an ended one why it ended (`disconnect`, `dropped`, `keepalive`,
    /// `will`, `kicked`). `None` for a status document the device published itself.
    pub reason: Option<&'static str>,
}

impl Status {
    /// Whether this comes from the device's connection (presence) rather than its payload.
    pub fn is_presence(&self) -> bool {
        self.reason.is_some()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Telemetry(Telemetry),
    Location(Location),
    Status(Status),
}

/// One valid document from one device.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub device: Arc<str>,
    /// Unix epoch milliseconds: the device's `ts`, or the receive time when it sent none.
    pub ts_ms: i64,
    /// Whether `ts_ms` is the device's own clock (it sent `ts`).
    pub device_ts: bool,
    pub seq: Option<u64>,
    pub body: Body,
}

impl Document {
    pub fn kind(&self) -> Kind {
        match self.body {
            Body::Telemetry(_) => Kind::Telemetry,
            Body::Location(_) => Kind::Location,
            Body::Status(_) => Kind::Status,
        }
    }
}
