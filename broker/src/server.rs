//! Starting the broker: the rumqttd router thread and our MQTT listeners.
//!
//! rumqttd's `Broker::start()` blocks forever, runs each listener on a private runtime and
//! only logs a failed bind; its connection loop refuses keep-alive 0 and costs about 50 KB per
//! connection. So only its router is used: listeners and connections are ours
//! ([`crate::connection`]), a busy port is a start-up error and accepting can be stopped at
//! shutdown. Plain MQTT is served straight from the socket; TLS and WebSocket clients come
//! through the [`crate::tunnel`] front ends, each in front of a listener of its own on a
//! private loopback port.

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;

use crate::commands::Commands;
use crate::connection::{self, Limits, Shared};
use crate::guard::Guard;
use crate::held::Held;
use crate::interest::Interest;
use crate::protocol::Listener;
use crate::router::{Ingress, Router};
use crate::sessions::Sessions;
use crate::settings::BrokerSettings;
use crate::tap::Tap;
use crate::tunnel::{self, FrontEnd, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for {what} on {addr}: {reason}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("the broker needs a multi-threaded tokio runtime (it parks connections that wait for the pipeline)")]
    Runtime,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the MQTT router did not start: {0}")]
    Router(String),
}

/// The listeners of a started broker.
pub struct RunningBroker {
    accept_loops: Vec<JoinHandle<()>>,
    sessions: Arc<Sessions>,
    mqtt_addr: SocketAddr,
    mqtts_addr: Option<SocketAddr>,
    mqtt_ws_addr: Option<SocketAddr>,
}

/// Closes a client's connection as a newer connection of the same client would.
#[derive(Clone)]
pub struct Kicker(Arc<Sessions>);

impl Kicker {
    /// Closes the connection of `client_id`; whether this broker had one.
    pub fn take_over(&self, client_id: &str) -> bool {
        self.0.kick(client_id)
    }
}

impl RunningBroker {
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// A handle that closes connections as a takeover would (cluster mode).
    pub fn kicker(&self) -> Kicker {
        Kicker(self.sessions.clone())
    }

    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts_addr
    }

    pub fn mqtt_ws_addr(&self) -> Option<SocketAddr> {
        self.mqtt_ws_addr
    }

    /// Closes the listening sockets. Open connections stay until the tap closes them.
    pub fn stop_accepting(&self) {
        for accept_loop in &self.accept_loops {
            accept_loop.abort();
        }
    }
}

/// Starts the router and binds the MQTT listeners, handing every publish to `tap` and every
/// admission question to `guard`.
pub async fn start(
    settings: &BrokerSettings,
    tap: Tap,
    guard: Arc<Guard>,
    commands: Arc<Commands>,
) -> Result<RunningBroker, BrokerError> {
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err(BrokerError::Runtime);
    }
    // Certificates first: a bad file must stop start-up before anything listens.
    let tls = match &settings.mqtts {
        Some(mqtts) => Some((mqtts.listen, tunnel::tls_acceptor(&mqtts.cert, &mqtts.key)?)),
        None => None,
    };
    let router = Arc::new(Router::spawn(settings.router_config()));
    let ingress = Ingress::open(&router).map_err(|e| BrokerError::Router(e.to_string()))?;
    let interest = Arc::new(Interest::default());
    let shared = Arc::new(Shared {
        tap: Arc::new(tap),
        guard,
        commands,
        sessions: Sessions::new(router.clone(), interest.clone(), settings.max_kept_sessions),
        router,
        ingress,
        interest,
        held: Held::new(settings.max_subscriber_bytes, settings.router_log_bytes()),
        limits: Limits {
            max_connections: settings.max_connections,
            max_packet_size: settings.max_packet_size,
            connect_timeout: settings.connect_timeout,
            receive_maximum: u16::try_from(settings.max_inflight)
                .unwrap_or(u16::MAX)
                .max(1),
            max_session_expiry: settings.max_session_expiry,
        },
        open: AtomicUsize::new(0),
    });
    let sessions = shared.sessions.clone();
    let listeners = Listeners { settings, shared };
    let mut accept_loops = Vec::new();
    let mqtt_addr = settings.mqtt_listen;
    accept_loops.push(
        listeners
            .listen("mqtt", mqtt_addr, mqtt_addr.ip().is_loopback())
            .await
            .map_err(|reason| BrokerError::Bind {
                what: "MQTT",
                addr: mqtt_addr,
                reason,
            })?,
    );
    tracing::info!(addr = %mqtt_addr, "MQTT listener up (3.1.1 and 5)");

    let mut mqtts_addr = None;
    if let Some((addr, acceptor)) = tls {
        let front = FrontEnd::Tls(acceptor);
        accept_loops.extend(listeners.fronted("MQTT over TLS", addr, front).await?);
        tracing::info!(%addr, "MQTT over TLS listener up");
        mqtts_addr = Some(addr);
    }
    let mut mqtt_ws_addr = None;
    if let Some(addr) = settings.mqtt_ws_listen {
        let front = FrontEnd::WebSocket {
            max_message: settings.max_packet_size.saturating_add(1024),
        };
        accept_loops.extend(
            listeners
                .fronted("MQTT over WebSocket", addr, front)
                .await?,
        );
        tracing::info!(%addr, "MQTT over WebSocket listener up");
        mqtt_ws_addr = Some(addr);
    }
    Ok(RunningBroker {
        accept_loops,
        sessions,
        mqtt_addr,
        mqtts_addr,
        mqtt_ws_addr,
    })
}

/// Binds with a listen backlog of 1,024 (tokio's default is 128): in a connect storm, a full
/// backlog drops SYNs and each costs its device a second before it retries.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// What every listener is built from.
struct Listeners<'a> {
    settings: &'a BrokerSettings,
    shared: Arc<Shared>,
}

impl Listeners<'_> {
    /// A listener on `addr` whose connections follow the rules of a public listener that is
    /// (or is not) on loopback.
    async fn listen(
        &self,
        name: &'static str,
        addr: SocketAddr,
        loopback: bool,
    ) -> Result<JoinHandle<()>, String> {
        let socket = bind(addr).map_err(|e| e.to_string())?;
        let listener = Arc::new(Listener { name, loopback });
        let shared = self.shared.clone();
        Ok(tokio::spawn(async move {
            loop {
                match socket.accept().await {
                    Ok((stream, _peer)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(connection::serve(stream, shared.clone(), listener.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(listener = name, error = %e, "cannot accept an MQTT connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }))
    }

    /// A public TLS or WebSocket front end on `addr`, relaying to a private rumqttd listener.
    async fn fronted(
        &self,
        what: &'static str,
        addr: SocketAddr,
        front: FrontEnd,
    ) -> Result<[JoinHandle<()>; 2], BrokerError> {
        let public = TcpListener::bind(addr)
            .await
            .map_err(|e| BrokerError::Bind {
                what,
                addr,
                reason: e.to_string(),
            })?;
        let name = front.name();
        let (private_addr, private) = self.private_listener(name, addr.ip().is_loopback()).await?;
        let front_loop = tokio::spawn(tunnel::serve(
            public,
            front,
            private_addr,
            self.settings.handshake_timeout,
        ));
        Ok([front_loop, private])
    }

    /// A listener on a free loopback port for a front end to relay to.
    async fn private_listener(
        &self,
        name: &'static str,
        loopback: bool,
    ) -> Result<(SocketAddr, JoinHandle<()>), BrokerError> {
        let mut last_error = String::new();
        for _ in 0..5 {
            let free = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map_err(|e| BrokerError::Bind {
                    what: "a private MQTT listener",
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    reason: e.to_string(),
                })?;
            match self.listen(name, free, loopback).await {
                Ok(handle) => return Ok((free, handle)),
                Err(e) => last_error = e,
            }
        }
        Err(BrokerError::Bind {
            what: "a private MQTT listener",
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            reason: last_error,
        })
    }
}
