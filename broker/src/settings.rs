//! Broker settings, and the rumqttd router configuration derived from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rumqttd::RouterConfig;

/// Commit logs exist only for filters someone subscribed to (commands, debugging
/// subscribers); telemetry does not go through them on its way to storage, so they can stay
/// small: 1 MiB segments, 10 per filter.
const LOG_SEGMENT_BYTES: usize = 1024 * 1024;
const LOG_SEGMENTS: usize = 10;

/// Everything an operator can tune about the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Address of the plain-TCP MQTT listener (3.1.1 and 5 on the same port).
    pub mqtt_listen: SocketAddr,
    /// MQTT over TLS, when configured.
    pub mqtts: Option<TlsListener>,
    /// MQTT over WebSocket, when configured.
    pub mqtt_ws_listen: Option<SocketAddr>,
    /// Time a TLS or WebSocket client gets to finish its handshake.
    pub handshake_timeout: Duration,
    /// Connections the router accepts at once; further CONNECTs are refused.
    pub max_connections: usize,
    /// Largest MQTT packet the broker reads. Payloads above the pipeline's own (smaller)
    /// limit are still read so they can be rejected with a reason instead of a dropped socket.
    pub max_packet_size: usize,
    /// Time a new socket gets to send its CONNECT before it is closed.
    pub connect_timeout: Duration,
    /// Unacknowledged QoS 1/2 publishes per connection, in each direction.
    pub max_inflight: usize,
    /// Bytes of publishes that may wait between the broker and the pipeline. When it is
    /// used up the broker stops reading from sockets (TCP backpressure) rather than drop.
    pub handover_budget_bytes: usize,
    /// Longest a session outlives its connection (MQTT 5 Session Expiry Interval is capped
    /// to it; an MQTT 3.1.1 session with clean session 0 is kept this long).
    pub max_session_expiry: Duration,
    /// Sessions kept for clients that are gone; past it, the one closest to expiry is dropped.
    pub max_kept_sessions: usize,
    /// Bytes the router may hold for subscribers: the queues kept sessions read when they
    /// come back (one log per subscribed filter) and retained messages. Past it, publishes
    /// that would add to it are not routed to subscribers (devices' data is still stored).
    pub max_subscriber_bytes: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            mqtt_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            mqtts: None,
            mqtt_ws_listen: None,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 100,
            handover_budget_bytes: 64 * 1024 * 1024,
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            max_kept_sessions: 100_000,
            max_subscriber_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A TLS listener and the PEM files of its certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl BrokerSettings {
    /// Bytes one filter's commit log holds before it drops its oldest segment.
    pub(crate) fn router_log_bytes(&self) -> u64 {
        (LOG_SEGMENT_BYTES * LOG_SEGMENTS) as u64
    }

    /// rumqttd's `RouterConfig::default()` refuses every connection and panics on the first
    /// publish (zero connections, zero segment size), so every field is set here.
    pub(crate) fn router_config(&self) -> RouterConfig {
        RouterConfig {
            // Room for the broker's own links (the ingress, and one while a session is dropped).
            max_connections: self.max_connections + 16,
            // Outgoing packets queued per connection before the router stops sending to it.
            max_outgoing_packet_count: 200,
            max_segment_size: LOG_SEGMENT_BYTES,
            max_segment_count: LOG_SEGMENTS,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        }
    }
}
