//! Presence changes as the pipeline takes them. The broker decides who is online (and logs
//! each change); the pipeline turns a change into the status document that live views and
//! storage get, and ingests the Last Will a connection left.

use bytes::Bytes;

#[derive(Clone, Debug, PartialEq)]
pub enum PresenceChange {
    /// The device was offline and has connected.
    Online { device: String },
    /// One of the device's connections ended.
    Ended {
        device: String,
        /// It was the device's newest connection: the device is offline now.
        offline: bool,
        /// Why, as CONTRACT.md names it (disconnect, dropped, keepalive, kicked).
        reason: &'static str,
        /// The connection's Last Will (topic, payload), when it ended without a DISCONNECT.
        will: Option<(Bytes, Bytes)>,
    },
}
