//! The embedded MQTT broker.
//!
//! rumqttd does the MQTT protocol work (sessions, acks, forwarding to subscribers). This crate
//! adds what Fieldline needs around it: router limits chosen on purpose, listeners that fail
//! loudly when they cannot bind, one port serving MQTT 3.1.1 and 5, and a [`Tap`] that hands
//! every publish to the ingest pipeline *before* the broker acknowledges it, so an
//! acknowledged publish can never be lost between the broker and the pipeline.

mod protocol;
mod server;
mod settings;
mod tap;

pub use server::{start, BrokerError, RunningBroker};
pub use settings::BrokerSettings;
pub use tap::{
    tap, DisconnectReason, Inbound, Message, Session, Tap, TapClosed, TapReceiver, Will,
};
