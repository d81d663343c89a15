//! The MQTT codec each connection uses: rumqttd's V4 or V5 chosen from the CONNECT packet, with
//! every parsed publish handed to the [`Tap`].
//!
//! Each connection task owns one, so it lives exactly as long as one
//! connection and sees every packet it reads before anything acts on it (and so before any
//! PUBACK is written). That lifetime also makes it the source of presence: a connection is
//! online from the moment its successful CONNACK is written until the codec is dropped,
//! whatever ended it.
//!
//! It is also where the [`Guard`]'s decisions are enforced, since it is the one place that sees
//! every packet before rumqttd acts on it: admission at CONNECT, the per-device access rules on
//! every PUBLISH, SUBSCRIBE and Last Will, cutting off connections whose device was disabled
//! or re-keyed, and the per-connection publish rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{self, v4::V4, v5::V5, ConnectReturnCode, Login, Packet, Protocol};

/// Client-to-server topic aliases a connection may set up (advertised in CONNACK).
pub(crate) const TOPIC_ALIAS_MAX: u16 = 64;

use crate::acl;
use crate::guard::{Admission, Guard, MAX_PAUSED};
use crate::presence::{DisconnectReason, Will};
use crate::rate_limit::TokenBucket;
use crate::tap::{Session, Tap};

/// Numbers connections for the life of the process.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// MQTT protocol level of the connection, known once its CONNECT header is buffered.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Version {
    Unknown,
    V4,
    V5,
}

/// What a connection's rules depend on: which listener accepted it.
#[derive(Debug, Clone)]
pub(crate) struct Listener {
    /// `mqtt`, `mqtts` or `mqtt-ws`, for logs and metrics.
    pub(crate) name: &'static str,
    /// The public address is a loopback one (anonymous clients may be welcome there).
    pub(crate) loopback: bool,
}

pub(crate) struct TappedProtocol {
    tap: Arc<Tap>,
    guard: Arc<Guard>,
    listener: Arc<Listener>,
    admission: Admission,
    /// The guard's generation last seen; a change means the registry must be asked again.
    seen_generation: u64,
    bucket: TokenBucket,
    /// The broker ended the connection (access rules, a changed registry entry, rate).
    kicked: bool,
    /// This connection is counted in its device's connections.
    counted: bool,
    version: Version,
    /// A CONNECT was read; rumqttd closes connections whose first packet is anything else.
    connected: bool,
    client_id: Arc<str>,
    /// MQTT 5 topic aliases this connection has set up, so aliased publishes carry their topic.
    /// Boxed when first used: most connections never set up an alias, and the box is one
    /// word where an empty map is six.
    #[allow(clippy::box_collection)]
    topic_aliases: Option<Box<HashMap<u16, Bytes>>>,
    session: Option<Session>,
    will: Option<Box<Will>>,
    /// Set when the broker writes a successful CONNACK (`write` only gets `&self`).
    online: AtomicBool,
    /// Numbered at the CONNACK, so the order of ids is the order in which the broker
    /// accepted connections (a device's newest connection has the highest).
    connection: AtomicU64,
    /// The client ended with DISCONNECT, which also discards its will.
    clean_end: bool,
    /// The client was silent for 1.5 × its keep-alive.
    timed_out: bool,
    /// When the bytes being parsed arrived: one clock reading per socket read, not per
    /// packet (a read brings dozens of publishes at high rates).
    read_at: Instant,
    last_packet: Instant,
    /// Log position of the newest publish this connection handed over: its PUBACKs wait
    /// until that is durable (`write` only gets `&self`).
    last_logged: AtomicU64,
    /// Publishes read but not yet handed to the tap: a socket read's worth goes to the log
    /// and the pipeline together ([`TappedProtocol::hand_over`]).
    pending: Vec<(Bytes, Bytes)>,
}

impl TappedProtocol {
    pub(crate) fn new(tap: Arc<Tap>, guard: Arc<Guard>, listener: Arc<Listener>) -> Self {
        let bucket = TokenBucket::new(
            guard.settings().publish_rate,
            guard.settings().publish_burst,
        );
        Self {
            tap,
            seen_generation: guard.generation(),
            guard,
            listener,
            admission: Admission::Anonymous,
            bucket,
            kicked: false,
            counted: false,
            version: Version::Unknown,
            connected: false,
            client_id: Arc::from(""),
            topic_aliases: None,
            session: None,
            will: None,
            online: AtomicBool::new(false),
            connection: AtomicU64::new(0),
            clean_end: false,
            timed_out: false,
            read_at: Instant::now(),
            last_packet: Instant::now(),
            last_logged: AtomicU64::new(0),
            pending: Vec::new(),
        }
    }

    /// Why the connection ended, judged when it is dropped.
    fn end_reason(&self) -> DisconnectReason {
        if self.kicked {
            DisconnectReason::Kicked
        } else if self.clean_end {
            DisconnectReason::Disconnect
        } else if self.timed_out {
            DisconnectReason::KeepAlive
        } else {
            DisconnectReason::Dropped
        }
    }

    /// Hands the publishes read so far to the tap (the log and the pipeline), before any of
    /// their acknowledgements leave. An error means they were not taken: the connection must
    /// end without acknowledging them.
    pub(crate) async fn hand_over(&mut self) -> Result<(), crate::tap::TapClosed> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let publishes = std::mem::take(&mut self.pending);
        if self.tap.is_remote() {
            // Cluster mode: acknowledged once the shared log holds them, awaited here.
            return self.tap.send_remote(&publishes, &self.client_id).await;
        }
        if let Some(position) = self.tap.send_batch(publishes, self.client_id.clone())? {
            self.last_logged.store(position, Ordering::Release);
        }
        Ok(())
    }

    /// Blocks until every publish this connection handed over is as durable as the log
    /// promises: its acknowledgements may be written then. One wait (and one sync, shared
    /// with every other connection) covers them all.
    pub(crate) fn wait_durable(&self) {
        self.tap
            .wait_durable(self.last_logged.load(Ordering::Acquire));
    }

    /// The connection's keep-alive ran out.
    pub(crate) fn timed_out(&mut self) {
        self.timed_out = true;
    }

    /// New bytes arrived from the socket now.
    pub(crate) fn bytes_arrived(&mut self) {
        self.read_at = Instant::now();
    }

    /// Time since the last packet was read.
    pub(crate) fn silent_for(&self) -> Duration {
        self.last_packet.elapsed()
    }

    /// The version of MQTT this connection speaks is 5.
    pub(crate) fn is_v5(&self) -> bool {
        self.version == Version::V5
    }

    /// Hands a publish to the tap, with its topic alias resolved into the packet (so the
    /// rest of the broker sees the full topic).
    fn tap_publish(
        &mut self,
        publish: &mut protocol::Publish,
        alias: Option<u16>,
    ) -> Result<(), protocol::Error> {
        if alias.is_some_and(|a| a == 0 || a > TOPIC_ALIAS_MAX) {
            metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
            return Err(protocol::Error::InvalidProtocol);
        }
        let topic = match alias {
            Some(alias) if publish.topic.is_empty() => match self
                .topic_aliases
                .as_ref()
                .and_then(|aliases| aliases.get(&alias))
            {
                Some(topic) => topic.clone(),
                // An alias never set up is a protocol error (MQTT 5 §3.3.2.3.4).
                None => {
                    metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
                    return Err(protocol::Error::InvalidProtocol);
                }
            },
            Some(alias) => {
                self.topic_aliases
                    .get_or_insert_with(Box::default)
                    .insert(alias, publish.topic.clone());
                publish.topic.clone()
            }
            None => publish.topic.clone(),
        };
        // MQTT §3.3.2.1: a topic name is never empty and never holds a wildcard.
        if topic.is_empty() || topic.iter().any(|b| matches!(b, b'+' | b'#')) {
            metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
            return Err(protocol::Error::InvalidProtocol);
        }
        if let Admission::Device { id, .. } = &self.admission {
            let allowed = std::str::from_utf8(&topic).is_ok_and(|t| acl::may_publish(id, t));
            if !allowed {
                return Err(self.deny("publish", &String::from_utf8_lossy(&topic)));
            }
        }
        // MQTT §1.5.4: a topic is UTF-8, or the connection is closed. (The log also marks its
        // own records with a first byte no UTF-8 string has.)
        if std::str::from_utf8(&topic).is_err() {
            metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
            return Err(protocol::Error::InvalidProtocol);
        }
        self.pending.push((topic.clone(), publish.payload.clone()));
        publish.topic = topic;
        Ok(())
    }
}

impl TappedProtocol {
    /// The device this connection speaks for: the registered device it logged in as, or,
    /// anonymously, its client id when that is a device id (then it is the device's session).
    pub(crate) fn device(&self) -> Option<Arc<str>> {
        match &self.admission {
            Admission::Device { id, .. } => Some(id.clone()),
            _ if !self.client_id.is_empty() && !self.client_id.contains(':') => {
                Some(self.client_id.clone())
            }
            _ => None,
        }
    }

    /// Ends the connection for breaking the access rules: counted, and logged with the device.
    fn deny(&mut self, action: &'static str, topic: &str) -> protocol::Error {
        metrics::counter!("fieldline_broker_acl_denied_total", "action" => action).increment(1);
        tracing::warn!(
            device = %self.device_name(),
            listener = self.listener.name,
            action,
            topic = %topic.escape_debug(),
            "refused: outside the device's own topics; closing the connection"
        );
        self.kicked = true;
        protocol::Error::InvalidProtocol
    }

    fn device_name(&self) -> &str {
        match &self.admission {
            Admission::Device { id, .. } => id,
            _ => &self.client_id,
        }
    }

    /// Admission at CONNECT: refuses, or rewrites the packet so rumqttd's password hook and
    /// session table see what the guard decided.
    fn admit(&mut self, packet: &mut Packet) -> Result<(), protocol::Error> {
        let Packet::Connect(connect, _, will, _, login) = packet else {
            return Ok(());
        };
        let username = login.as_ref().map(|l| l.username.as_str());
        self.admission = self.guard.admission(self.listener.loopback, username);
        match &self.admission {
            Admission::Refused(why) => {
                metrics::counter!("fieldline_broker_auth_total", "result" => "anonymous_refused")
                    .increment(1);
                tracing::warn!(listener = self.listener.name, client_id = %connect.client_id.escape_debug(), "MQTT connection refused: {why}");
                return Err(protocol::Error::InvalidProtocol);
            }
            Admission::Anonymous => {
                // rumqttd's hook refuses logins it is not given; this one only the guard knows.
                let (username, password) = self.guard.anonymous_login();
                *login = Some(Login { username, password });
            }
            Admission::Device { id, .. } => {
                let id = id.clone();
                if !self.guard.open_connection(&id) {
                    metrics::counter!("fieldline_broker_auth_total", "result" => "too_many_connections")
                        .increment(1);
                    tracing::warn!(device = %id, "MQTT connection refused: the device has too many open connections");
                    return Err(protocol::Error::InvalidProtocol);
                }
                self.counted = true;
                if let Some(will) = will.as_ref() {
                    let allowed =
                        std::str::from_utf8(&will.topic).is_ok_and(|t| acl::may_publish(&id, t));
                    if !allowed {
                        let topic = String::from_utf8_lossy(&will.topic).into_owned();
                        return Err(self.deny("will", &topic));
                    }
                }
                // Client ids live in the device's own namespace, so no device can take over
                // (and so disconnect) another device's session by naming its client id.
                if !connect.client_id.is_empty() && connect.client_id != *id {
                    connect.client_id = format!("{id}:{}", connect.client_id);
                }
            }
        }
        Ok(())
    }

    /// Before the next packet: is the connection's device still what it was at CONNECT?
    fn check_still_admitted(&mut self) -> Result<(), protocol::Error> {
        let generation = self.guard.generation();
        if generation == self.seen_generation {
            return Ok(());
        }
        self.seen_generation = generation;
        let still = match &self.admission {
            Admission::Device { id, revision } => self.guard.still_valid(id, *revision),
            // Admitted while the registry was empty: authentication has come on since.
            Admission::Anonymous if self.connected => {
                !self.guard.auth_configured() || self.guard.settings().allow_anonymous
            }
            _ => true,
        };
        if !still {
            metrics::counter!("fieldline_broker_kicked_total", "reason" => "registry").increment(1);
            tracing::info!(device = %self.device_name(), "registry changed (device disabled or re-keyed, or authentication turned on): closing the connection");
            self.kicked = true;
            return Err(protocol::Error::InvalidProtocol);
        }
        Ok(())
    }

    /// Holds a PUBLISH back until the connection's rate allows it.
    fn pace(&mut self, stream: &BytesMut) -> Result<(), protocol::Error> {
        let is_publish = stream.first().is_some_and(|b| b >> 4 == 3);
        if !self.connected || !is_publish || self.bucket.time_to_token(self.read_at).is_zero() {
            return Ok(());
        }
        let paused = &self.guard.paused;
        if paused.fetch_add(1, Ordering::AcqRel) >= MAX_PAUSED {
            paused.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("fieldline_broker_kicked_total", "reason" => "rate").increment(1);
            tracing::warn!(device = %self.device_name(), "publish rate exceeded while too many connections wait; closing the connection");
            self.kicked = true;
            return Err(protocol::Error::InvalidProtocol);
        }
        metrics::counter!("fieldline_broker_rate_limited_total").increment(1);
        tokio::task::block_in_place(|| loop {
            let wait = self.bucket.time_to_token(Instant::now());
            if wait.is_zero() {
                break;
            }
            std::thread::sleep(wait);
        });
        // The packet is taken now, after the wait.
        self.read_at = Instant::now();
        paused.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Reads the protocol level from a buffered CONNECT packet.
///
/// Layout: fixed header byte, remaining length (1–4 bytes, 7 bits each), protocol name as a
/// 2-byte length and its bytes ("MQTT" or, for 3.1, "MQIsdp"), then the level byte.
/// Returns the number of further bytes needed when the header is not all there yet.
fn connect_level(stream: &[u8]) -> Result<u8, usize> {
    let mut pos = 1;
    loop {
        let Some(byte) = stream.get(pos) else {
            return Err(pos + 1 - stream.len());
        };
        pos += 1;
        if byte & 0x80 == 0 || pos >= 5 {
            break;
        }
    }
    let name_len = match stream.get(pos..pos + 2) {
        Some(len) => usize::from(u16::from_be_bytes([len[0], len[1]])),
        None => return Err(pos + 2 - stream.len()),
    };
    let level_at = pos + 2 + name_len;
    stream
        .get(level_at)
        .copied()
        // Lazily: with the level there, the stream may be longer than `level_at + 1`.
        .ok_or_else(|| level_at + 1 - stream.len())
}

impl TappedProtocol {
    /// Parses the next packet from `stream`, applying the guard's rules and handing a publish
    /// to the tap. `InsufficientBytes(n)` asks for at least `n` more bytes.
    pub(crate) fn read(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, protocol::Error> {
        if self.version == Version::Unknown {
            // A first packet that is not a CONNECT goes to V4, which rejects it.
            self.version = if stream.first() == Some(&0x10) {
                match connect_level(stream) {
                    Ok(5) => Version::V5,
                    Ok(_) => Version::V4,
                    Err(more) => return Err(protocol::Error::InsufficientBytes(more)),
                }
            } else if stream.is_empty() {
                return Err(protocol::Error::InsufficientBytes(2));
            } else {
                Version::V4
            };
        }
        self.check_still_admitted()?;
        self.pace(stream)?;
        let packet = match self.version {
            Version::V5 => V5.read_mut(stream, max_size),
            _ => V4.read_mut(stream, max_size),
        };
        let mut packet = match packet {
            Ok(packet) => packet,
            Err(protocol::Error::InsufficientBytes(n)) => {
                return Err(protocol::Error::InsufficientBytes(n));
            }
            Err(e) => {
                tracing::debug!(client_id = %self.client_id, error = %e, "malformed MQTT packet, closing connection");
                metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
                return Err(e);
            }
        };
        self.last_packet = self.read_at;
        match &mut packet {
            // MQTT: a second CONNECT is a protocol violation that closes the connection; it
            // must not rename the device this connection speaks for.
            Packet::Connect(..) if self.connected => {
                metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
                return Err(protocol::Error::InvalidProtocol);
            }
            Packet::Connect(connect, _, will, _, login) => {
                let (connect, will, login) = (&*connect, &*will, &*login);
                self.client_id = Arc::from(connect.client_id.as_str());
                self.connected = true;
                self.session = Some(Session {
                    connection: 0,
                    username: login.as_ref().map(|l| Arc::from(l.username.as_str())),
                    keep_alive: connect.keep_alive,
                });
                self.will = will.as_ref().map(|w| {
                    Box::new(Will {
                        topic: w.topic.clone(),
                        payload: w.message.clone(),
                    })
                });
                metrics::counter!("fieldline_broker_connects_total").increment(1);
            }
            Packet::Disconnect(..) => self.clean_end = true,
            // Before CONNECT, rumqttd refuses the connection; nothing of it is data.
            Packet::Publish(..) if !self.connected => {}
            Packet::Publish(publish, properties) => {
                self.bucket.take(self.last_packet);
                let alias = properties.as_mut().and_then(|p| p.topic_alias.take());
                self.tap_publish(publish, alias)?;
            }
            Packet::Subscribe(subscribe, _) => {
                if let Admission::Device { id, .. } = &self.admission {
                    let id = id.clone();
                    if let Some(refused) = subscribe
                        .filters
                        .iter()
                        .find(|f| !acl::may_subscribe(&id, &f.path))
                    {
                        let filter = refused.path.clone();
                        return Err(self.deny("subscribe", &filter));
                    }
                }
            }
            _ => {}
        }
        if matches!(packet, Packet::Connect(..)) {
            self.admit(&mut packet)?;
        }
        Ok(packet)
    }

    /// Encodes `packet` onto `write`. Acknowledgements leave only after
    /// [`TappedProtocol::hand_over`] and [`TappedProtocol::wait_durable`].
    pub(crate) fn write(
        &self,
        packet: Packet,
        write: &mut BytesMut,
    ) -> Result<usize, protocol::Error> {
        if let (Packet::ConnAck(ack, _), Some(session)) = (&packet, &self.session) {
            if ack.code == ConnectReturnCode::Success && !self.online.swap(true, Ordering::Relaxed)
            {
                let connection = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
                self.connection.store(connection, Ordering::Relaxed);
                let session = Session {
                    connection,
                    ..session.clone()
                };
                self.tap.connected(self.client_id.clone(), &session);
            }
        }
        match self.version {
            Version::V5 => V5.write(packet, write),
            _ => V4.write(packet, write),
        }
    }
}

impl Drop for TappedProtocol {
    fn drop(&mut self) {
        if self.counted {
            if let Admission::Device { id, .. } = &self.admission {
                self.guard.close_connection(id);
            }
        }
        if !self.online.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut session) = self.session.take() else {
            return;
        };
        session.connection = self.connection.load(Ordering::Relaxed);
        let reason = self.end_reason();
        let will = if self.clean_end {
            None
        } else {
            self.will.take().map(|will| *will)
        };
        self.tap
            .ended(self.client_id.clone(), &session, reason, will);
    }
}

#[cfg(test)]
mod tests {
    use super::connect_level;

    #[test]
    fn reads_the_level_of_mqtt_311_and_5_connects() {
        // CONNECT, remaining length 12, "MQTT", level
        let v4 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60];
        let v5 = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0];
        assert_eq!(connect_level(&v4), Ok(4));
        assert_eq!(connect_level(&v5), Ok(5));
    }

    #[test]
    fn asks_for_more_bytes_when_the_header_is_cut() {
        let full = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4];
        for cut in 1..full.len() {
            let need = connect_level(&full[..cut]).expect_err("header is incomplete");
            assert!(
                need >= 1 && cut + need <= full.len(),
                "cut {cut} asked for {need}"
            );
        }
    }

    #[test]
    fn stops_reading_the_remaining_length_after_four_bytes() {
        // Continuation bits on every length byte must not run past four bytes; the name
        // length is then read from what follows.
        let hostile = [0x10, 0xff, 0xff, 0xff, 0xff, 0, 1, b'x', 5];
        assert_eq!(connect_level(&hostile), Ok(5));
        assert_eq!(connect_level(&[0x10]), Err(1));
    }
}
