//! Starting the broker: the rumqttd router thread and the MQTT listeners on our runtime.
//!
//! rumqttd's `Broker::start()` blocks forever, runs each listener on a private runtime and
//! only logs a failed bind. Its lower-level `Router` and `Server` are used instead, so a busy
//! port is a start-up error and accepting can be stopped at shutdown. Plain MQTT goes straight
//! to a rumqttd listener; TLS and WebSocket clients come through the [`crate::tunnel`] front
//! ends, each in front of a rumqttd listener of its own on a private loopback port.

use std::net::SocketAddr;
use std::sync::Arc;

use rumqttd::{AuthHandler, LinkType, Router, Server, ServerSettings};
use tokio::net::TcpListener;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;

use crate::guard::Guard;
use crate::protocol::{Listener, TappedProtocol};
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
}

/// The listeners of a started broker.
pub struct RunningBroker {
    accept_loops: Vec<JoinHandle<()>>,
    mqtt_addr: SocketAddr,
    mqtts_addr: Option<SocketAddr>,
    mqtt_ws_addr: Option<SocketAddr>,
}

impl RunningBroker {
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
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
) -> Result<RunningBroker, BrokerError> {
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err(BrokerError::Runtime);
    }
    // Certificates first: a bad file must stop start-up before anything listens.
    let tls = match &settings.mqtts {
        Some(mqtts) => Some((mqtts.listen, tunnel::tls_acceptor(&mqtts.cert, &mqtts.key)?)),
        None => None,
    };
    let router_tx = Router::new(0, settings.router_config()).spawn();
    let listeners = Listeners {
        settings,
        server: move |config, protocol| Server::new(config, router_tx.clone(), protocol),
        tap,
        guard,
    };
    let mut accept_loops = Vec::new();
    let mqtt_addr = settings.mqtt_listen;
    accept_loops.push(
        listeners
            .rumqttd("mqtt", mqtt_addr, mqtt_addr.ip().is_loopback())
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
        mqtt_addr,
        mqtts_addr,
        mqtt_ws_addr,
    })
}

/// What every listener is built from. `server` makes a rumqttd listener attached to the
/// router (the router's inbox has a type rumqttd does not export, so a closure holds it).
struct Listeners<'a, S> {
    settings: &'a BrokerSettings,
    server: S,
    tap: Tap,
    guard: Arc<Guard>,
}

impl<S> Listeners<'_, S>
where
    S: Fn(ServerSettings, TappedProtocol) -> Server<TappedProtocol>,
{
    /// A rumqttd listener on `addr` whose connections follow the rules of a public listener
    /// that is (or is not) on loopback.
    async fn rumqttd(
        &self,
        name: &'static str,
        addr: SocketAddr,
        loopback: bool,
    ) -> Result<JoinHandle<()>, String> {
        let guard = self.guard.clone();
        let auth: AuthHandler = Arc::new(move |_client_id, username, password| {
            let guard = guard.clone();
            Box::pin(async move { guard.authenticate(&username, &password).await })
        });
        let listener = Arc::new(Listener { name, loopback });
        let mut server = (self.server)(
            self.settings.server_settings(name, addr, auth),
            TappedProtocol::new(self.tap.clone(), self.guard.clone(), listener),
        );
        let mut accept_loop = Box::pin(async move { server.start(LinkType::Remote).await });

        // `Server::start` binds on its first poll and only then waits for connections, so one
        // poll tells whether the address was free.
        tokio::select! {
            biased;
            result = &mut accept_loop => {
                return Err(match result {
                    Err(e) => e.to_string(),
                    Ok(()) => "listener stopped at once".to_string(),
                });
            }
            () = std::future::ready(()) => {}
        }
        Ok(tokio::spawn(async move {
            if let Err(e) = accept_loop.await {
                tracing::error!(%addr, error = %e, "MQTT listener failed");
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
        let (private_addr, private) = self.private_rumqttd(name, addr.ip().is_loopback()).await?;
        let front_loop = tokio::spawn(tunnel::serve(
            public,
            front,
            private_addr,
            self.settings.handshake_timeout,
        ));
        Ok([front_loop, private])
    }

    /// rumqttd binds by address only, so a free loopback port is found first; another process
    /// can take it in between, hence a few tries.
    async fn private_rumqttd(
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
            match self.rumqttd(name, free, loopback).await {
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
