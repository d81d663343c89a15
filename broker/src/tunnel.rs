//! Front ends for MQTT over TLS and over WebSocket.
//!
//! A handshake must never run in an accept loop (rumqttd's own listeners do that with no
//! timeout, so one idle socket stalls every later connection). Here each accepted socket gets
//! its own task: the handshake runs there under a deadline, and only then is the connection
//! passed, as plain MQTT bytes, to a listener of ours on a private loopback port that carries
//! the public listener's rules. A stalled handshake costs one task and one socket until its
//! deadline, and never delays anyone else.
//!
//! Over WebSocket, each binary message carries MQTT bytes (any framing: a packet may span
//! messages); both MQTT 3.1.1 and 5 work.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Handshakes in progress at once on one front end; sockets beyond it are closed at once.
const MAX_HANDSHAKES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("cannot read the TLS private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the TLS certificate and key do not fit together: {0}")]
    Config(rustls::Error),
}

/// Builds the TLS server side from PEM files: a certificate chain and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificates {
            path: cert.display().to_string(),
            reason: "no certificate in the file".into(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(TlsError::Config)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a front end unwraps before the bytes reach the broker.
#[derive(Clone)]
pub(crate) enum FrontEnd {
    Tls(TlsAcceptor),
    WebSocket { max_message: usize },
}

impl FrontEnd {
    /// The listener's name in logs and metrics.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            FrontEnd::Tls(_) => "mqtts",
            FrontEnd::WebSocket { .. } => "mqtt-ws",
        }
    }
}

/// Accepts on `listener` forever, each connection on its own task.
pub(crate) async fn serve(
    listener: TcpListener,
    front: FrontEnd,
    upstream: SocketAddr,
    handshake_timeout: Duration,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let name = front.name();
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(listener = name, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = handshakes.clone().try_acquire_owned() else {
            metrics::counter!("fieldline_broker_handshake_failures_total", "listener" => name, "reason" => "too_many")
                .increment(1);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let front = front.clone();
        tokio::spawn(async move {
            let opened = tokio::time::timeout(handshake_timeout, open(front, socket)).await;
            drop(slot);
            let client = match opened {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    metrics::counter!("fieldline_broker_handshake_failures_total", "listener" => name, "reason" => "failed")
                        .increment(1);
                    tracing::debug!(listener = name, %peer, error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("fieldline_broker_handshake_failures_total", "listener" => name, "reason" => "timeout")
                        .increment(1);
                    tracing::debug!(listener = name, %peer, "handshake timed out");
                    return;
                }
            };
            if let Err(e) = relay(client, upstream).await {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended");
            }
        });
    }
}

/// A client whose handshake is done.
enum Opened {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    WebSocket(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

async fn open(front: FrontEnd, socket: TcpStream) -> Result<Opened, String> {
    match front {
        FrontEnd::Tls(acceptor) => acceptor
            .accept(socket)
            .await
            .map(|tls| Opened::Tls(Box::new(tls)))
            .map_err(|e| e.to_string()),
        FrontEnd::WebSocket { max_message } => {
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message));
            tokio_tungstenite::accept_hdr_async_with_config(
                socket,
                choose_subprotocol,
                Some(config),
            )
            .await
            .map(|ws| Opened::WebSocket(Box::new(ws)))
            .map_err(|e| e.to_string())
        }
    }
}

/// MQTT over WebSocket names its subprotocol `mqtt` (older clients: `mqttv3.1`); answer with
/// the one the client offered.
#[allow(clippy::result_large_err)] // the signature is tungstenite's callback
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, tokio_tungstenite::tungstenite::handshake::server::ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| *p == "mqtt" || *p == "mqttv3.1")
        .map(str::to_owned);
    if let Some(chosen) = offered.and_then(|p| HeaderValue::from_str(&p).ok()) {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", chosen);
    }
    Ok(response)
}

/// Carries bytes both ways between the client and the private broker listener until either
/// side ends.
async fn relay(client: Opened, upstream: SocketAddr) -> std::io::Result<()> {
    let broker = TcpStream::connect(upstream).await?;
    broker.set_nodelay(true)?;
    match client {
        Opened::Tls(tls) => {
            // Either side ending ends both: waiting for the other half-close would let a
            // silent client hold two sockets after the broker dropped it.
            let (mut from_client, mut to_client) = tokio::io::split(*tls);
            let (mut from_broker, mut to_broker) = broker.into_split();
            tokio::select! {
                r = tokio::io::copy(&mut from_client, &mut to_broker) => { r?; }
                r = tokio::io::copy(&mut from_broker, &mut to_client) => {
                    r?;
                    let _ = to_client.shutdown().await;
                }
            }
        }
        Opened::WebSocket(ws) => {
            let (mut ws_tx, mut ws_rx) = (*ws).split();
            let (mut from_broker, mut to_broker) = broker.into_split();
            let inbound = async {
                while let Some(message) = ws_rx.next().await {
                    match message.map_err(std::io::Error::other)? {
                        Message::Binary(bytes) => to_broker.write_all(&bytes).await?,
                        Message::Close(_) => break,
                        // MQTT over WebSocket is binary only (MQTT 5 spec, 6.0).
                        Message::Text(_) => {
                            return Err(std::io::Error::other("text frame on an MQTT WebSocket"))
                        }
                        _ => {}
                    }
                }
                to_broker.shutdown().await
            };
            let outbound = async {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = from_broker.read(&mut buf).await?;
                    if n == 0 {
                        let _ = ws_tx.send(Message::Close(None)).await;
                        return Ok::<(), std::io::Error>(());
                    }
                    ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .map_err(std::io::Error::other)?;
                }
            };
            tokio::select! {
                r = inbound => r?,
                r = outbound => r?,
            }
        }
    }
    Ok(())
}
