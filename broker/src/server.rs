//! Starting the broker: the rumqttd router thread and the MQTT listener on our runtime.
//!
//! rumqttd's `Broker::start()` blocks forever, runs each listener on a private runtime and
//! only logs a failed bind. Its lower-level `Router` and `Server` are used instead, so a busy
//! port is a start-up error and accepting can be stopped at shutdown.

use std::net::SocketAddr;

use rumqttd::{LinkType, Router, Server};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;

use crate::protocol::TappedProtocol;
use crate::settings::BrokerSettings;
use crate::tap::Tap;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("the broker needs a multi-threaded tokio runtime (it parks connections that wait for the pipeline)")]
    Runtime,
}

/// The listeners of a started broker.
pub struct RunningBroker {
    accept_loops: Vec<JoinHandle<()>>,
    mqtt_addr: SocketAddr,
}

impl RunningBroker {
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Closes the listening sockets. Open connections stay until the tap closes them.
    pub fn stop_accepting(&self) {
        for accept_loop in &self.accept_loops {
            accept_loop.abort();
        }
    }
}

/// Starts the router and binds the MQTT listener, handing every publish to `tap`.
pub async fn start(settings: &BrokerSettings, tap: Tap) -> Result<RunningBroker, BrokerError> {
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err(BrokerError::Runtime);
    }
    let router_tx = Router::new(0, settings.router_config()).spawn();
    let addr = settings.mqtt_listen;
    let mut server = Server::new(
        settings.server_settings(),
        router_tx,
        TappedProtocol::new(tap),
    );
    let mut accept_loop = Box::pin(async move { server.start(LinkType::Remote).await });

    // `Server::start` binds on its first poll and only then waits for connections, so one
    // poll tells whether the address was free.
    tokio::select! {
        biased;
        result = &mut accept_loop => {
            let reason = match result {
                Err(e) => e.to_string(),
                Ok(()) => "listener stopped at once".to_string(),
            };
            return Err(BrokerError::Bind { addr, reason });
        }
        () = std::future::ready(()) => {}
    }
    tracing::info!(%addr, "MQTT listener up (3.1.1 and 5)");
    let accept_loop = tokio::spawn(async move {
        if let Err(e) = accept_loop.await {
            tracing::error!(%addr, error = %e, "MQTT listener failed");
        }
    });
    Ok(RunningBroker {
        accept_loops: vec![accept_loop],
        mqtt_addr: addr,
    })
}
