//! The embedded MQTT broker.
//!
//! rumqttd's router routes publishes to subscribers and keeps their sessions' queues; our own
//! connection tasks speak MQTT 3.1.1 and 5 to the clients (one port for both) and apply the
//! protocol's delivery rules the router lacks. Listeners fail loudly when they cannot bind, and
//! a [`Tap`] hands every publish to the ingest pipeline *before* the broker acknowledges it, so
//! an acknowledged publish can never be lost between the broker and the pipeline. Before that
//! hand-over the tap appends the publish to the [`wal`] (write-ahead log), so an acknowledged
//! publish survives a crash of the process too (and, in `fsync` mode, a power loss).

//!
//! The [`Guard`] decides who may connect (the device registry, anonymous rules) and the codec
//! enforces what each connection may do: per-device topics, publish rate, and an end to
//! connections of disabled or re-keyed devices. TLS and WebSocket clients pass through
//! front ends that handshake off the accept path.

pub mod acl;
pub mod commands;
mod connection;
pub mod credentials;
mod delivery;
mod guard;
mod held;
mod interest;
pub mod presence;
mod protocol;
mod rate_limit;
mod router;
mod server;
mod sessions;
mod settings;
mod tap;
mod tunnel;
pub mod wal;

pub use commands::{CommandToDevice, Commands, Report};
pub use guard::{DeviceAccess, Guard, GuardSettings};
pub use presence::{DisconnectReason, Will};
pub use server::{start, BrokerError, Kicker, RunningBroker};
pub use settings::{BrokerSettings, TlsListener};
pub use tap::{
    remote_tap, tap, Inbound, Message, RemoteLog, RemoteRecord, Session, Settling, Tap, TapClosed,
    TapReceiver,
};
pub use tunnel::{tls_acceptor, TlsError};
