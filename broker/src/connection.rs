//! One MQTT connection, from its CONNECT to its end: our own task in place of rumqttd's.
//!
//! rumqttd's connection loop refuses keep-alive 0, gives every connection about 50 KB of
//! buffers and router queues, and passes the router's forwards to the client unchanged. This
//! task reads and writes the socket itself, answers what only concerns this connection (acks,
//! pings, SUBACK, UNSUBACK) itself, and involves the router only for what it is for: routing
//! publishes to subscribers and keeping sessions. An idle connection holds a small read buffer,
//! its codec and this task, nothing in the router.
//!
//! The publishes of one socket read are handed to the write-ahead log and the pipeline
//! together (one log write, one queue entry) before any of their PUBACKs or PUBRECs is written;
//! those acknowledgements go out together after one wait for durability.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    self, ConnAck, ConnAckProperties, ConnectReturnCode, Filter, LastWill, LastWillProperties,
    Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
    RetainForwardRule, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck,
    UnsubAckReason, Unsubscribe,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::commands::{is_command_filter, CommandToDevice, Commands, Inbox};
use crate::delivery::{ClientLimits, Outbound, Step, Subscriptions};
use crate::guard::Guard;
use crate::held::Held;
use crate::interest::Interest;
use crate::protocol::{Listener, TappedProtocol, TOPIC_ALIAS_MAX};
use crate::router::{tagged, Ingress, Link, Origin, Router};
use crate::sessions::{Holder, Kept, Sessions};
use crate::tap::Tap;

/// Numbers connections (for No Local and session ownership).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A read buffer shrinks back to this once a burst is over, so idle connections stay small.
const IDLE_READ_BUFFER: usize = 64;
const BUSY_READ_BUFFER: usize = 8 * 1024;
/// Subscriptions one session may hold (each filter costs the router a commit log).
const MAX_SUBSCRIPTIONS: usize = 1_000;
/// A client that takes nothing for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) tap: Arc<Tap>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) commands: Arc<Commands>,
    pub(crate) router: Arc<Router>,
    pub(crate) ingress: Ingress,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) interest: Arc<Interest>,
    pub(crate) held: Held,
    pub(crate) limits: Limits,
    /// Connections past their CONNECT.
    pub(crate) open: AtomicUsize,
}

/// The broker's own limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_packet_size: usize,
    pub(crate) connect_timeout: Duration,
    /// Unacknowledged QoS 1/2 publishes a client may send (advertised as Receive Maximum).
    pub(crate) receive_maximum: u16,
    /// Longest a session is kept after its connection ends.
    pub(crate) max_session_expiry: Duration,
}

/// Why the loop ended.
enum End {
    /// The socket closed or failed, or a packet broke the protocol or the access rules.
    Closed,
    /// The client sent DISCONNECT.
    Disconnect,
    /// A newer connection took the session over.
    TakenOver,
}

/// Serves one accepted socket until the connection ends.
///
/// A task is as large as the largest state of its future, and an idle connection spends its
/// life in one state: waiting in [`run`]. So connecting and ending run boxed (their state is
/// freed once they are done), and what the connection keeps is one allocation of its own.
pub(crate) async fn serve<S>(stream: S, shared: Arc<Shared>, listener: Arc<Listener>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some(mut live) = Box::pin(accept(stream, shared, listener)).await else {
        return;
    };
    if !live.acknowledged {
        Box::pin(live.finish(End::Closed)).await;
        return;
    }
    let live_ref = &mut *live;
    let end = run(
        &mut live_ref.stream,
        &mut live_ref.codec,
        &live_ref.shared,
        &live_ref.holder,
        &mut live_ref.session,
        &mut live_ref.buffers,
        live_ref.keep_alive,
        &mut live_ref.expiry,
    )
    .await;
    Box::pin(live.finish(end)).await;
}

/// A connection past its CONNACK: everything it keeps while it lives.
struct Live<S> {
    _counted: Counted,
    stream: S,
    codec: TappedProtocol,
    shared: Arc<Shared>,
    holder: Arc<Holder>,
    session: Session,
    buffers: Buffers,
    keep_alive: Duration,
    /// Session Expiry Interval in seconds (a DISCONNECT may change it).
    expiry: u32,
    will: Option<Box<(LastWill, Option<LastWillProperties>)>>,
    /// The CONNACK could be encoded; otherwise the connection ends at once.
    acknowledged: bool,
}

/// Reads the CONNECT, admits the client, takes over its session and writes the CONNACK.
async fn accept<S>(
    mut stream: S,
    shared: Arc<Shared>,
    listener: Arc<Listener>,
) -> Option<Box<Live<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut codec = TappedProtocol::new(shared.tap.clone(), shared.guard.clone(), listener);
    let mut read = BytesMut::with_capacity(IDLE_READ_BUFFER);
    let limits = shared.limits;
    let connect = Box::pin(tokio::time::timeout(
        limits.connect_timeout,
        next_packet(&mut stream, &mut codec, &mut read, limits.max_packet_size),
    ))
    .await;
    let Ok(Some(Packet::Connect(connect, properties, will, will_properties, login))) = connect
    else {
        return None;
    };
    // The codec put the guard's decision into the login: the anonymous marker or a device.
    let login = login?;
    if !Box::pin(shared.guard.authenticate(&login.username, &login.password)).await {
        return None;
    }
    let v5 = codec.is_v5();
    let open = shared.open.fetch_add(1, Ordering::AcqRel) + 1;
    if open > limits.max_connections {
        shared.open.fetch_sub(1, Ordering::AcqRel);
        metrics::counter!("fieldline_broker_refused_connections_total", "reason" => "too_many")
            .increment(1);
        tracing::warn!(
            limit = limits.max_connections,
            "MQTT connection refused: the broker has as many connections as it accepts"
        );
        let code = if v5 {
            ConnectReturnCode::ServerUnavailable
        } else {
            ConnectReturnCode::ServiceUnavailable
        };
        Box::pin(refuse(&mut stream, &codec, code)).await;
        return None;
    }
    let open = Counted(shared.clone());
    let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        if !connect.clean_session && !v5 {
            // MQTT 3.1.1 §3.1.3.1: a session cannot be kept for a client without an id.
            let code = ConnectReturnCode::ClientIdentifierNotValid;
            Box::pin(refuse(&mut stream, &codec, code)).await;
            return None;
        }
        // The colon keeps it out of the device-id namespace (no presence, no device topics).
        let id = format!(":auto-{number}");
        assigned = Some(id.clone());
        Arc::from(id)
    } else {
        Arc::from(connect.client_id.as_str())
    };

    let requested_expiry = match &properties {
        _ if !v5 && connect.clean_session => 0,
        _ if !v5 => u32::MAX,
        Some(p) => p.session_expiry_interval.unwrap_or(0),
        None => 0,
    };
    let max_expiry = u32::try_from(limits.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
    let expiry = requested_expiry.min(max_expiry);
    let client_limits = ClientLimits {
        receive_maximum: properties
            .as_ref()
            .and_then(|p| p.receive_maximum)
            .map_or(usize::from(u16::MAX), usize::from)
            .max(1),
        maximum_packet_size: properties
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX))
            .max(16),
    };

    let claim = Box::pin(
        shared
            .sessions
            .claim(&client_id, number, limits.connect_timeout),
    )
    .await;
    let holder = claim.holder;
    let mut kept = claim.kept;
    if connect.clean_session {
        if let Some(old) = kept.take() {
            shared.sessions.discard(&client_id, &old);
        }
    }
    let session_present = kept.is_some();
    let mut session = Session {
        client_id: client_id.clone(),
        number,
        keep_in_router: expiry > 0,
        limits: client_limits,
        routed: None,
        awaiting_release: kept
            .as_mut()
            .map(|k| std::mem::take(&mut k.awaiting_release))
            .unwrap_or_default(),
        inbox: None,
    };
    if let Some(kept) = kept.filter(|k| k.in_router || !k.subscriptions.is_empty()) {
        let in_router = kept.in_router;
        let routed = session.routed();
        routed.subscriptions = kept.subscriptions;
        if in_router {
            // The router holds the session's queue: attach to resume it, keeping it again
            // when this connection ends (dropped afterwards if this one asked for no expiry).
            match Link::attach(&shared.router, &client_id, true) {
                Ok((mut link, _)) => {
                    // The router restores a resumed session's filters but not their
                    // identifiers (nor, for unsubscribing, its own index of them):
                    // subscribing again restores both, and sends no retained messages.
                    let again = routed.subscriptions.all().map(|(id, sub)| {
                        Packet::Subscribe(
                            Subscribe {
                                pkid: 0,
                                filters: vec![Filter {
                                    path: sub.filter.clone(),
                                    qos: crate::delivery::qos_of(sub.qos),
                                    nolocal: sub.no_local,
                                    preserve_retain: sub.retain_as_published,
                                    retain_forward_rule: RetainForwardRule::Never,
                                }],
                            },
                            Some(SubscribeProperties {
                                id: Some(id),
                                user_properties: Vec::new(),
                            }),
                        )
                    });
                    if let Err(e) = link.send(again.collect::<Vec<_>>()) {
                        tracing::warn!(client_id = %client_id, error = %e, "cannot restore the session's subscriptions in the router");
                    }
                    routed.link = Some((link, true));
                }
                Err(e) => {
                    tracing::warn!(client_id = %client_id, error = %e, "cannot resume the session in the router");
                }
            }
        }
    }

    // A resumed session that had subscribed to the device's commands takes them again.
    open_inbox_if_subscribed(&shared.commands, &codec, &mut session);

    let ack = ConnAck {
        session_present,
        code: ConnectReturnCode::Success,
    };
    let ack_properties = v5.then(|| ConnAckProperties {
        session_expiry_interval: (expiry != requested_expiry).then_some(expiry),
        receive_max: Some(limits.receive_maximum),
        retain_available: Some(1),
        max_packet_size: Some(u32::try_from(limits.max_packet_size).unwrap_or(u32::MAX)),
        assigned_client_identifier: assigned,
        topic_alias_max: Some(TOPIC_ALIAS_MAX),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(0),
        ..Default::default()
    });
    let mut write = BytesMut::new();
    // Past the claim, a failure still goes through `finish`, which gives the session back.
    let acknowledged = codec
        .write(Packet::ConnAck(ack, ack_properties), &mut write)
        .is_ok();
    if read.is_empty() && read.capacity() > IDLE_READ_BUFFER {
        // A CONNECT with a long login grew it; an idle connection keeps the smallest.
        read = BytesMut::with_capacity(IDLE_READ_BUFFER);
    }
    Some(Box::new(Live {
        _counted: open,
        stream,
        codec,
        shared: shared.clone(),
        holder,
        session,
        buffers: Buffers { read, write },
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
        expiry,
        will: will
            .filter(|_| acknowledged)
            .map(|will| Box::new((will, will_properties))),
        acknowledged,
    }))
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Live<S> {
    /// Publishes the will unless the client said goodbye, and keeps or drops the session.
    async fn finish(mut self: Box<Self>, end: End) {
        let shared = self.shared.clone();
        let client_id = self.session.client_id.clone();
        if !matches!(end, End::Disconnect) {
            if let Some(will) = self.will.take() {
                let (will, properties) = *will;
                publish_will(&shared, will, properties, self.session.number);
            }
        }
        if let Some(inbox) = self.session.inbox.take() {
            inbox.close(&shared.commands);
        }
        let expiry = self.expiry;
        // The session outlives the connection when it has an expiry; the router's part of
        // it is kept only if the router holds any (the link asked it to).
        let routed = self.session.routed.take();
        let (link, subscriptions) = match routed {
            Some(routed) => (routed.link, routed.subscriptions),
            None => (None, Subscriptions::default()),
        };
        let router_kept = match link {
            Some((link, keeps)) => {
                link.detach();
                keeps
            }
            None => false,
        };
        let in_router = router_kept && expiry > 0;
        let keep = if expiry > 0 {
            Some(Kept {
                expires_at: Instant::now() + Duration::from_secs(u64::from(expiry)),
                in_router,
                subscriptions,
                awaiting_release: std::mem::take(&mut self.session.awaiting_release),
            })
        } else {
            for filter in subscriptions.filters() {
                shared.interest.remove(filter);
            }
            None
        };
        // A link that asked the router to keep the session, of a session that ends now (its
        // expiry is 0), leaves state in the router to drop.
        let purge = router_kept && expiry == 0;
        shared
            .sessions
            .release(&client_id, &self.holder, keep, purge);
        if matches!(end, End::TakenOver) {
            tracing::debug!(client_id = %client_id, "session taken over by a newer connection");
        }
        let _ = self.stream.shutdown().await;
    }
}

/// One of the broker's open connections, counted against `--max-connections` until dropped.
struct Counted(Arc<Shared>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// This connection's part of its session.
struct Session {
    client_id: Arc<str>,
    number: u64,
    /// A router link attached now asks the router to keep the session when it ends.
    keep_in_router: bool,
    /// The client's limits on what it is sent.
    limits: ClientLimits,
    /// What a connection has once it subscribes or resumes a session: most never do, so it is
    /// allocated then.
    routed: Option<Box<Routed>>,
    /// QoS 2 publishes received and acknowledged with PUBREC, waiting for their PUBREL.
    awaiting_release: Vec<u16>,
    /// The device's commands, once it subscribes to them.
    inbox: Option<Box<Inbox>>,
}

/// A connection's subscriptions, its router link and the delivery of what the router sends.
struct Routed {
    /// The router link, and whether it asked the router to keep the session.
    link: Option<(Link, bool)>,
    subscriptions: Subscriptions,
    outbound: Outbound,
}

impl Session {
    fn routed(&mut self) -> &mut Routed {
        let (limits, number) = (self.limits, self.number);
        self.routed.get_or_insert_with(|| {
            Box::new(Routed {
                link: None,
                subscriptions: Subscriptions::default(),
                outbound: Outbound::new(limits, number),
            })
        })
    }

    fn link(&mut self) -> Option<&mut Link> {
        self.routed
            .as_mut()
            .and_then(|r| r.link.as_mut())
            .map(|(link, _)| link)
    }
}

/// Opens the device's command mailbox when the session subscribes to its commands, and
/// closes it when the last such subscription goes.
fn open_inbox_if_subscribed(commands: &Commands, codec: &TappedProtocol, session: &mut Session) {
    let Some(device) = codec.device() else {
        return;
    };
    let subscribed = session.routed.as_ref().is_some_and(|r| {
        r.subscriptions
            .filters()
            .any(|f| is_command_filter(&device, f))
    });
    match (&session.inbox, subscribed) {
        (None, true) => {
            // usize::MAX: the client did not say (see `ClientLimits`).
            let advertised = Some(session.limits.maximum_packet_size).filter(|m| *m != usize::MAX);
            let inbox = Inbox::open(commands, device, session.number, advertised);
            session.inbox = Some(Box::new(inbox));
        }
        (Some(_), false) => {
            if let Some(inbox) = session.inbox.take() {
                inbox.close(commands);
            }
        }
        _ => {}
    }
}

/// Publishes the commands waiting in the inbox that the client has room for.
fn pump_commands(
    shared: &Shared,
    codec: &TappedProtocol,
    session: &mut Session,
    write: &mut BytesMut,
    steps: &mut Vec<Step>,
) {
    let (Some(inbox), Some(routed)) = (session.inbox.as_deref_mut(), session.routed.as_deref_mut())
    else {
        return;
    };
    let max_packet = routed.outbound.limits().maximum_packet_size;
    let v5 = codec.is_v5();
    inbox.pump(
        &shared.commands,
        &routed.subscriptions,
        &mut routed.outbound,
        steps,
        |command, qos, pkid| publish_command(codec, write, command, qos, pkid, v5, max_packet),
    );
}

/// Encodes one command onto `write`; `false` (and nothing written) when the client cannot
/// take it.
fn publish_command(
    codec: &TappedProtocol,
    write: &mut BytesMut,
    command: &CommandToDevice,
    qos: u8,
    pkid: u16,
    v5: bool,
    max_packet: usize,
) -> bool {
    let topic = Bytes::copy_from_slice(command.topic.as_bytes());
    let publish =
        crate::delivery::publish_with(&topic, &command.payload, qos, pkid, false, command.again);
    let properties = v5.then(|| rumqttd::protocol::PublishProperties {
        response_topic: Some(command.response_topic.clone()),
        correlation_data: Some(Bytes::copy_from_slice(command.id.as_bytes())),
        ..Default::default()
    });
    let before = write.len();
    match codec.write(Packet::Publish(publish, properties), write) {
        Ok(written) if written <= max_packet => true,
        _ => {
            write.truncate(before);
            metrics::counter!("fieldline_broker_oversize_dropped_total").increment(1);
            false
        }
    }
}

struct Buffers {
    read: BytesMut,
    write: BytesMut,
}

#[allow(clippy::too_many_arguments)]
async fn run<S>(
    stream: &mut S,
    codec: &mut TappedProtocol,
    shared: &Shared,
    holder: &Holder,
    session: &mut Session,
    buffers: &mut Buffers,
    keep_alive: Duration,
    expiry: &mut u32,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max_packet = shared.limits.max_packet_size;
    let mut need = 0usize;
    // The last read filled the buffer: more is coming, so read in large pieces.
    let mut busy = false;
    let mut steps = Vec::new();
    // Bytes that came with the CONNECT are packets too (a client need not wait for CONNACK).
    let mut unparsed = !buffers.read.is_empty();
    // Both live across the loop: re-registering a waiter and a timer on every pass costs
    // two locks per socket read. The keep-alive timer is set for the longest the client may
    // still be silent and only moved when it fires early (MQTT §3.1.2.10: 1.5 × keep-alive
    // of silence ends the connection; 0 turns it off).
    let kicked = holder.kicked();
    tokio::pin!(kicked);
    let silence_limit = (!keep_alive.is_zero()).then(|| keep_alive + keep_alive / 2);
    let keep_alive_timer = tokio::time::sleep(silence_limit.unwrap_or(Duration::MAX / 4));
    tokio::pin!(keep_alive_timer);
    loop {
        if unparsed {
            unparsed = false;
            let ended = loop {
                let head = publish_head(&buffers.read);
                match codec.read(&mut buffers.read, max_packet) {
                    Ok(packet) => {
                        let write = &mut buffers.write;
                        if let Some(end) = inbound(
                            packet, head, codec, shared, session, write, &mut steps, expiry,
                        ) {
                            break Some(end);
                        }
                    }
                    Err(protocol::Error::InsufficientBytes(n)) => {
                        need = n;
                        break None;
                    }
                    Err(_) => break Some(End::Closed),
                }
            };
            // Everything this read brought goes to the log and the pipeline at once, before
            // any of its acknowledgements leave (even when the connection ends here, what
            // came before the end is the device's data).
            if codec.hand_over().await.is_err() {
                return End::Closed;
            }
            if let Some(end) = ended {
                if matches!(end, End::Disconnect) && !buffers.write.is_empty() {
                    codec.wait_durable();
                    let _ = write_or_give_up(stream, &buffers.write).await;
                }
                return end;
            }
            let idle = buffers.read.is_empty() && !busy;
            if idle && buffers.read.capacity() > 4 * IDLE_READ_BUFFER {
                buffers.read = BytesMut::with_capacity(IDLE_READ_BUFFER);
            }
        }
        if !buffers.write.is_empty() {
            // Acknowledgements promise that the log has their publishes.
            codec.wait_durable();
            let written = tokio::select! {
                biased;
                () = &mut kicked => return End::TakenOver,
                written = write_or_give_up(stream, &buffers.write) => written,
            };
            if !written {
                return End::Closed;
            }
            buffers.write.clear();
            if buffers.write.capacity() > BUSY_READ_BUFFER {
                buffers.write = BytesMut::new();
            }
        }
        let want = if busy {
            BUSY_READ_BUFFER
        } else {
            IDLE_READ_BUFFER
        };
        if buffers.read.capacity() - buffers.read.len() < need.max(want / 2) {
            buffers.read.reserve(need.max(want));
        }
        let spare = buffers.read.capacity() - buffers.read.len();
        let Session { inbox, routed, .. } = session;
        let inbox = inbox.as_deref_mut();
        let link = routed
            .as_mut()
            .and_then(|r| r.link.as_mut())
            .map(|(link, _)| link);
        tokio::select! {
            biased;
            () = &mut kicked => return End::TakenOver,
            () = &mut keep_alive_timer, if silence_limit.is_some() => {
                let limit = silence_limit.unwrap_or_default();
                let silent = codec.silent_for();
                if silent >= limit {
                    codec.timed_out();
                    tracing::debug!(client_id = %session.client_id, "keep-alive ran out");
                    return End::Closed;
                }
                keep_alive_timer.as_mut().reset(tokio::time::Instant::now() + (limit - silent));
            }
            n = stream.read_buf(&mut buffers.read) => {
                match n {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(n) => busy = n >= spare,
                }
                codec.bytes_arrived();
                unparsed = true;
            }
            taken = next_commands(inbox) => {
                if let Some(inbox) = session.inbox.as_deref_mut() {
                    inbox.take(taken);
                }
                pump_commands(shared, codec, session, &mut buffers.write, &mut steps);
                if apply(&mut steps, codec, session, &mut buffers.write).is_err() {
                    return End::Closed;
                }
            }
            batch = next_notifications(link) => {
                let Ok(batch) = batch else {
                    if let Some(link) = session.link() {
                        link.gone = true;
                    }
                    tracing::debug!(client_id = %session.client_id, "the router closed this connection's link");
                    return End::Closed;
                };
                let mut wake = false;
                let routed = session.routed();
                for notification in batch {
                    match notification {
                        Notification::Forward(forward) => {
                            routed.outbound.forward(forward, &routed.subscriptions, &mut steps);
                        }
                        Notification::Unschedule => wake = true,
                        other => match Option::<Packet>::from(other) {
                            Some(Packet::PubRel(rel, _)) => routed.outbound.router_pubrel(rel.pkid, &mut steps),
                            Some(Packet::Disconnect(..)) => return End::TakenOver,
                            // SUBACK, UNSUBACK and the like: the client had ours.
                            _ => {}
                        },
                    }
                }
                if apply(&mut steps, codec, session, &mut buffers.write).is_err() {
                    return End::Closed;
                }
                if wake {
                    if let Some(link) = session.link() {
                        if Box::pin(link.rx.wake()).await.is_err() {
                            link.gone = true;
                            return End::Closed;
                        }
                    }
                }
            }
        }
    }
}

/// Writes everything, or gives up on a client that has not taken it within
/// [`WRITE_TIMEOUT`] (it stopped reading: its session must not stay blocked behind it).
async fn write_or_give_up<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> bool {
    let mut write = std::pin::pin!(stream.write_all(bytes));
    // Nearly every write fits the socket's buffer at once: only one that has to wait needs
    // a timer (arming one per write costs a lock on the timer wheel).
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(done) = first {
        return done.is_ok();
    }
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// The router's next notifications for a connection with a live link; never, without one.
/// Boxed: most connections never have a link, and the task should not carry its size.
async fn next_notifications(
    link: Option<&mut Link>,
) -> Result<Vec<Notification>, crate::router::RouterError> {
    match link {
        Some(link) if !link.gone => Box::pin(link.next()).await,
        _ => std::future::pending().await,
    }
}

/// The next commands for a connection whose device takes them; never, otherwise. Boxed for
/// the same reason as [`next_notifications`].
async fn next_commands(inbox: Option<&mut Inbox>) -> Vec<CommandToDevice> {
    match inbox {
        Some(inbox) => Box::pin(inbox.next()).await,
        None => std::future::pending().await,
    }
}

/// Reads until one whole packet is parsed: the CONNECT. `None` when the socket ends first or
/// the codec refuses it.
async fn next_packet<S>(
    stream: &mut S,
    codec: &mut TappedProtocol,
    read: &mut BytesMut,
    max_packet: usize,
) -> Option<Packet>
where
    S: AsyncRead + Unpin,
{
    loop {
        match codec.read(read, max_packet) {
            Ok(packet) => return Some(packet),
            Err(protocol::Error::InsufficientBytes(n)) => {
                read.reserve(n.max(64));
                match stream.read_buf(read).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => codec.bytes_arrived(),
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "connection refused at CONNECT");
                return None;
            }
        }
    }
}

async fn refuse<S>(stream: &mut S, codec: &TappedProtocol, code: ConnectReturnCode)
where
    S: AsyncWrite + Unpin,
{
    let mut write = BytesMut::new();
    let ack = ConnAck {
        session_present: false,
        code,
    };
    if codec.write(Packet::ConnAck(ack, None), &mut write).is_ok() {
        let _ = stream.write_all(&write).await;
    }
    let _ = stream.shutdown().await;
}

/// QoS and packet id of the PUBLISH at the front of `buf`, read from its bytes (rumqttd's
/// parsed publish keeps them private).
fn publish_head(buf: &[u8]) -> Option<(u8, u16)> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 3;
    let mut at = 1;
    while buf.get(at)? & 0x80 != 0 {
        at += 1;
        if at > 4 {
            return None;
        }
    }
    at += 1;
    let topic_len = usize::from(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]));
    if qos == 0 {
        return Some((0, 0));
    }
    let pkid_at = at + 2 + topic_len;
    let pkid = u16::from_be_bytes([*buf.get(pkid_at)?, *buf.get(pkid_at + 1)?]);
    Some((qos, pkid))
}

/// One packet from the client. Returns how the connection ends, if it does.
#[allow(clippy::too_many_arguments)]
fn inbound(
    packet: Packet,
    head: Option<(u8, u16)>,
    codec: &mut TappedProtocol,
    shared: &Shared,
    session: &mut Session,
    write: &mut BytesMut,
    steps: &mut Vec<Step>,
    expiry: &mut u32,
) -> Option<End> {
    let v5 = codec.is_v5();
    let reply = match packet {
        Packet::Publish(publish, properties) => {
            let (qos, pkid) = head.unwrap_or((0, 0));
            // A QoS 2 publish resent before its PUBREL was forwarded already.
            let resent = qos == 2 && session.awaiting_release.contains(&pkid);
            if !resent
                && qos == 2
                && session.awaiting_release.len() >= usize::from(shared.limits.receive_maximum)
            {
                // MQTT 5 §3.3.4: more unreleased QoS 2 publishes than the Receive Maximum
                // we advertised.
                metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
                return Some(End::Closed);
            }
            if !resent {
                let origin = Origin {
                    qos,
                    retain: publish.retain,
                    connection: session.number,
                };
                route(
                    shared,
                    &publish.topic,
                    &publish.payload,
                    properties,
                    &origin,
                );
            }
            match qos {
                1 => Some(Packet::PubAck(
                    PubAck {
                        pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                )),
                2 => {
                    if !resent {
                        session.awaiting_release.push(pkid);
                    }
                    Some(Packet::PubRec(
                        PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        },
                        None,
                    ))
                }
                _ => None,
            }
        }
        Packet::PubRel(release, _) => {
            let known = session
                .awaiting_release
                .iter()
                .position(|p| *p == release.pkid);
            if let Some(at) = known {
                session.awaiting_release.swap_remove(at);
            }
            Some(Packet::PubComp(
                PubComp {
                    pkid: release.pkid,
                    reason: if known.is_some() || !v5 {
                        PubCompReason::Success
                    } else {
                        PubCompReason::PacketIdentifierNotFound
                    },
                },
                None,
            ))
        }
        Packet::PubAck(ack, _)
            if session
                .inbox
                .as_deref_mut()
                .is_some_and(|inbox| inbox.acknowledged(&shared.commands, ack.pkid)) =>
        {
            // A command's PUBACK: its slot is free for the next message.
            if let Some(routed) = session.routed.as_deref_mut() {
                routed.outbound.unreserve(steps);
            }
            pump_commands(shared, codec, session, write, steps);
            None
        }
        ack @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)) => {
            if let Some(routed) = session.routed.as_deref_mut() {
                routed.outbound.client_ack(&ack, steps);
            }
            pump_commands(shared, codec, session, write, steps);
            None
        }
        Packet::Subscribe(subscribe, properties) => {
            let suback = subscribe_to(subscribe, properties, v5, shared, session);
            open_inbox_if_subscribed(&shared.commands, codec, session);
            Some(suback)
        }
        Packet::Unsubscribe(unsubscribe, _) => {
            let unsuback = unsubscribe_from(unsubscribe, shared, session);
            open_inbox_if_subscribed(&shared.commands, codec, session);
            Some(unsuback)
        }
        Packet::PingReq(_) => Some(Packet::PingResp(PingResp)),
        Packet::Disconnect(_, properties) => {
            if let Some(update) = properties.and_then(|p| p.session_expiry_interval) {
                // MQTT 5 §3.14.2.2.2: a session that was to end with the connection cannot be
                // given an expiry at DISCONNECT.
                if *expiry == 0 && update != 0 {
                    metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
                    return Some(End::Closed);
                }
                let max =
                    u32::try_from(shared.limits.max_session_expiry.as_secs()).unwrap_or(u32::MAX);
                *expiry = update.min(max);
            }
            return Some(End::Disconnect);
        }
        // Packets only a server sends, and a second CONNECT (the codec refuses that itself).
        _ => {
            metrics::counter!("fieldline_broker_protocol_errors_total").increment(1);
            return Some(End::Closed);
        }
    };
    if let Some(reply) = reply {
        if codec.write(reply, write).is_err() {
            return Some(End::Closed);
        }
    }
    if apply(steps, codec, session, write).is_err() {
        return Some(End::Closed);
    }
    None
}

/// Answers a SUBSCRIBE ourselves and hands the accepted filters to the router, each with an
/// identifier of ours so its forwards can be told apart (options the router does not keep).
fn subscribe_to(
    subscribe: Subscribe,
    properties: Option<SubscribeProperties>,
    v5: bool,
    shared: &Shared,
    session: &mut Session,
) -> Packet {
    let client_sub = properties.and_then(|p| p.id);
    let mut codes = Vec::with_capacity(subscribe.filters.len());
    let mut to_router = Vec::new();
    for filter in subscribe.filters {
        let code = if !protocol::valid_filter(&filter.path) {
            if v5 {
                SubscribeReasonCode::TopicFilterInvalid
            } else {
                SubscribeReasonCode::Failure
            }
        } else if filter.path.starts_with("$share/") {
            if v5 {
                SubscribeReasonCode::SharedSubscriptionsNotSupported
            } else {
                SubscribeReasonCode::Failure
            }
        } else if filter.path.starts_with('$') || !filter.path.as_bytes()[0].is_ascii() {
            // The router ends the link of a `$` subscription (no `$SYS` here), and cannot
            // route topics that start with a character beyond ASCII (see `routable`).
            if v5 {
                SubscribeReasonCode::TopicFilterInvalid
            } else {
                SubscribeReasonCode::Failure
            }
        } else if session.routed.as_ref().is_some_and(|r| {
            r.subscriptions.len() >= MAX_SUBSCRIPTIONS && !r.subscriptions.has(&filter.path)
        }) {
            if v5 {
                SubscribeReasonCode::QuotaExceeded
            } else {
                SubscribeReasonCode::Failure
            }
        } else {
            let (id, replaced) = session
                .routed()
                .subscriptions
                .subscribe(&filter, client_sub);
            if replaced {
                // The router keeps an existing subscription as it was (its QoS, and no
                // retained messages again): replace it there by ending it first, in the same
                // batch, so no message is published in between.
                to_router.push(Packet::Unsubscribe(
                    Unsubscribe {
                        pkid: subscribe.pkid,
                        filters: vec![filter.path.clone()],
                    },
                    None,
                ));
            } else {
                shared.interest.add(&filter.path);
            }
            let code = match filter.qos as u8 {
                0 => SubscribeReasonCode::QoS0,
                1 => SubscribeReasonCode::QoS1,
                _ => SubscribeReasonCode::QoS2,
            };
            to_router.push(Packet::Subscribe(
                Subscribe {
                    pkid: subscribe.pkid,
                    filters: vec![filter],
                },
                Some(SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                }),
            ));
            code
        };
        codes.push(code);
    }
    if !to_router.is_empty() {
        let keep = session.keep_in_router;
        let client_id = session.client_id.clone();
        let routed = session.routed();
        if routed.link.is_none() {
            match Link::attach(&shared.router, &client_id, keep) {
                Ok((link, _)) => routed.link = Some((link, keep)),
                Err(e) => {
                    tracing::warn!(client_id = %session.client_id, error = %e, "cannot attach to the router; subscription refused");
                    metrics::counter!("fieldline_broker_router_errors_total").increment(1);
                }
            }
        }
        let sent = match session.link() {
            Some(link) => link.send(to_router).is_ok(),
            None => false,
        };
        if !sent {
            {
                for code in &mut codes {
                    if !matches!(code, SubscribeReasonCode::Failure)
                        && !matches!(code, SubscribeReasonCode::TopicFilterInvalid)
                        && !matches!(code, SubscribeReasonCode::SharedSubscriptionsNotSupported)
                    {
                        *code = if v5 {
                            SubscribeReasonCode::Unspecified
                        } else {
                            SubscribeReasonCode::Failure
                        };
                    }
                }
            }
        }
    }
    Packet::SubAck(
        SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
        },
        None,
    )
}

/// Answers an UNSUBSCRIBE ourselves (the router stays silent about filters it does not have)
/// and hands the filters that were subscribed to the router.
fn unsubscribe_from(unsubscribe: Unsubscribe, shared: &Shared, session: &mut Session) -> Packet {
    let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
    let mut removed = Vec::new();
    for filter in &unsubscribe.filters {
        let removed_here = session
            .routed
            .as_deref_mut()
            .is_some_and(|r| r.subscriptions.unsubscribe(filter));
        if removed_here {
            shared.interest.remove(filter);
            removed.push(filter.clone());
            reasons.push(UnsubAckReason::Success);
        } else {
            reasons.push(UnsubAckReason::NoSubscriptionExisted);
        }
    }
    if !removed.is_empty() {
        if let Some(link) = session.link() {
            let to_router = Packet::Unsubscribe(
                Unsubscribe {
                    pkid: unsubscribe.pkid,
                    filters: removed,
                },
                None,
            );
            if let Err(e) = link.send([to_router]) {
                tracing::debug!(error = %e, "router link gone at unsubscribe");
            }
        }
    }
    Packet::UnsubAck(
        UnsubAck {
            pkid: unsubscribe.pkid,
            reasons,
        },
        None,
    )
}

/// Carries out delivery steps: packets for the client are encoded (one too large for the
/// client is dropped and counted), acknowledgements for the router sent in one batch.
fn apply(
    steps: &mut Vec<Step>,
    codec: &TappedProtocol,
    session: &mut Session,
    write: &mut BytesMut,
) -> Result<(), protocol::Error> {
    let mut to_router = VecDeque::new();
    while !steps.is_empty() {
        for step in std::mem::take(steps) {
            match step {
                Step::Router(packet) => to_router.push_back(packet),
                Step::Client(packet) => {
                    let before = write.len();
                    let written = codec.write(packet, write)?;
                    let Some(routed) = session.routed.as_deref_mut() else {
                        continue;
                    };
                    if written > routed.outbound.limits().maximum_packet_size {
                        // Only publishes grow large; read what it was from its own bytes.
                        let head = publish_head(&write[before..]);
                        write.truncate(before);
                        metrics::counter!("fieldline_broker_oversize_dropped_total").increment(1);
                        if let Some((qos, pkid)) = head {
                            routed.outbound.undeliverable(pkid, qos, steps);
                        }
                    }
                }
            }
        }
    }
    if !to_router.is_empty() {
        if let Some(link) = session.link() {
            if !link.gone && link.send(to_router).is_err() {
                link.gone = true;
            }
        }
    }
    Ok(())
}

/// Publishes a Last Will to subscribers (the codec already handed it to the pipeline).
fn publish_will(
    shared: &Shared,
    will: LastWill,
    properties: Option<LastWillProperties>,
    number: u64,
) {
    let properties = properties.map(|p| rumqttd::protocol::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        content_type: p.content_type,
        ..Default::default()
    });
    let origin = Origin {
        qos: will.qos as u8,
        retain: will.retain,
        connection: number,
    };
    route(shared, &will.topic, &will.message, properties, &origin);
}

/// Hands a publish to the router when a subscriber wants it (or it is retained) and what
/// the router holds for subscribers stays within its bound ([`Held`]). Most publishes are
/// telemetry nobody subscribes to: one allocation-free look at the subscriptions, and done.
fn route(
    shared: &Shared,
    topic: &Bytes,
    payload: &Bytes,
    properties: Option<rumqttd::protocol::PublishProperties>,
    origin: &Origin,
) {
    if !(origin.retain || shared.interest.wanted(topic)) || !crate::router::routable(topic) {
        return;
    }
    let filters = shared.interest.matching(topic);
    if shared
        .held
        .admit(&filters, topic, payload.len(), origin.retain)
    {
        shared
            .ingress
            .publish(tagged(topic.clone(), payload.clone(), properties, origin));
    }
}

#[cfg(test)]
mod tests {
    use super::publish_head;

    #[test]
    fn reads_qos_and_packet_id_from_publish_bytes() {
        // QoS 1, remaining length 9, topic "a/b", pkid 0x0102, payload "xy"
        let qos1 = [0x32, 9, 0, 3, b'a', b'/', b'b', 1, 2, b'x', b'y'];
        assert_eq!(publish_head(&qos1), Some((1, 0x0102)));
        let qos0 = [0x30, 7, 0, 3, b'a', b'/', b'b', b'x', b'y'];
        assert_eq!(publish_head(&qos0), Some((0, 0)));
        assert_eq!(publish_head(&[0x32, 9, 0]), None);
        assert_eq!(publish_head(&[0xC0, 0]), None);
    }
}
