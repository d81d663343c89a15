//! A minimal MQTT 3.1.1 client written from the specification, over plain TCP, TLS (rustls)
//! or WebSocket (tungstenite): the same packets on every transport, and full control over
//! what is sent, for the security tests. Also test certificates made with rcgen.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

enum Transport {
    Stream(Box<dyn Io>),
    WebSocket(Box<Ws>),
}

/// Which listener, and so which transport, a client uses.
#[derive(Clone)]
pub enum Endpoint {
    Tcp(u16),
    Tls { port: u16, ca_pem: String },
    WebSocket(u16),
}

pub struct RawMqtt {
    transport: Transport,
    buf: Vec<u8>,
    next_pkid: u16,
}

/// A packet as read: the fixed header's first byte and the rest.
pub type RawPacket = (u8, Vec<u8>);

impl RawMqtt {
    pub async fn open(endpoint: &Endpoint) -> Result<RawMqtt, String> {
        let transport = match endpoint {
            Endpoint::Tcp(port) => {
                let tcp = TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .map_err(|e| e.to_string())?;
                Transport::Stream(Box::new(tcp))
            }
            Endpoint::Tls { port, ca_pem } => {
                let tcp = TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .map_err(|e| e.to_string())?;
                let tls = tls_connector(ca_pem)
                    .connect(ServerName::try_from("localhost").expect("valid name"), tcp)
                    .await
                    .map_err(|e| e.to_string())?;
                Transport::Stream(Box::new(tls))
            }
            Endpoint::WebSocket(port) => {
                let mut request = format!("ws://127.0.0.1:{port}/mqtt")
                    .into_client_request()
                    .map_err(|e| e.to_string())?;
                request
                    .headers_mut()
                    .insert("sec-websocket-protocol", "mqtt".parse().expect("header"));
                let (ws, response) = tokio_tungstenite::connect_async(request)
                    .await
                    .map_err(|e| e.to_string())?;
                assert_eq!(
                    response
                        .headers()
                        .get("sec-websocket-protocol")
                        .map(|v| v.as_bytes()),
                    Some(&b"mqtt"[..]),
                    "the server answers with the mqtt subprotocol"
                );
                Transport::WebSocket(Box::new(ws))
            }
        };
        Ok(RawMqtt {
            transport,
            buf: Vec::new(),
            next_pkid: 1,
        })
    }

    /// Opens and sends CONNECT (clean session, 30 s keep-alive); Ok once CONNACK accepts.
    pub async fn connect(
        endpoint: &Endpoint,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<RawMqtt, String> {
        let mut client = Self::open(endpoint).await?;
        client.send(&connect_packet(client_id, login, None)).await?;
        match client.next(Duration::from_secs(10)).await? {
            Some((0x20, body)) if body.get(1) == Some(&0) => Ok(client),
            Some((0x20, body)) => Err(format!("CONNACK refused with code {:?}", body.get(1))),
            Some(other) => Err(format!("expected CONNACK, got {other:?}")),
            None => Err("no CONNACK within 10 s".into()),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.transport {
            Transport::Stream(io) => {
                io.write_all(bytes).await.map_err(|e| e.to_string())?;
                io.flush().await.map_err(|e| e.to_string())
            }
            Transport::WebSocket(ws) => ws
                .send(Message::Binary(bytes.to_vec().into()))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Reads more bytes; Err when the connection is closed.
    async fn fill(&mut self) -> Result<(), String> {
        match &mut self.transport {
            Transport::Stream(io) => {
                let mut chunk = [0u8; 4096];
                let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed".into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            Transport::WebSocket(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(bytes))) => {
                        self.buf.extend_from_slice(&bytes);
                        break;
                    }
                    Some(Ok(Message::Close(_))) | None => return Err("connection closed".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                }
            },
        }
        Ok(())
    }

    /// The next packet within `wait`; Ok(None) when none came; Err when the connection closed.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<RawPacket>, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) = take_packet(&mut self.buf) {
                return Ok(Some(packet));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Ok(None),
                Ok(result) => result?,
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK (other packets are skipped).
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        let pkid = self.pkid();
        self.send(&publish_packet(topic, payload, pkid)).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Some((0x40, body)) if body[..2] == pkid.to_be_bytes() => return Ok(()),
                Some(_) => continue,
                None => return Err("no PUBACK within 10 s".into()),
            }
        }
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; Ok with its return code.
    pub async fn subscribe(&mut self, filter: &str) -> Result<u8, String> {
        let pkid = self.pkid();
        self.send(&subscribe_packet(filter, pkid)).await?;
        loop {
            match self.next(Duration::from_secs(10)).await? {
                Some((0x90, body)) if body[..2] == pkid.to_be_bytes() => return Ok(body[2]),
                Some(_) => continue,
                None => return Err("no SUBACK within 10 s".into()),
            }
        }
    }

    /// Waits up to `wait` for the server to close the connection; the packets seen meanwhile.
    pub async fn closed_within(
        &mut self,
        wait: Duration,
    ) -> Result<Vec<RawPacket>, Vec<RawPacket>> {
        let mut seen = Vec::new();
        loop {
            match self.next(wait).await {
                Err(_) => return Ok(seen),
                Ok(None) => return Err(seen),
                Ok(Some(packet)) => seen.push(packet),
            }
        }
    }

    fn pkid(&mut self) -> u16 {
        let pkid = self.next_pkid;
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        pkid
    }
}

fn take_packet(buf: &mut Vec<u8>) -> Option<RawPacket> {
    let mut len = 0usize;
    let mut shift = 0;
    let mut pos = 1;
    loop {
        let byte = *buf.get(pos)?;
        len |= usize::from(byte & 0x7f) << shift;
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    if buf.len() < pos + len {
        return None;
    }
    let body = buf[pos..pos + len].to_vec();
    let header = buf[0];
    buf.drain(..pos + len);
    Some((header, body))
}

/// An MQTT variable byte integer (a remaining length).
pub fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// An MQTT string: two length bytes, then the bytes.
pub fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A whole packet: the fixed header byte, the remaining length, the body.
pub fn framed(header: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(body.len(), &mut out);
    out.extend(body);
    out
}

/// CONNECT, MQTT 3.1.1, clean session, 30 s keep-alive, optional login and will (topic, payload).
pub fn connect_packet(
    client_id: &str,
    login: Option<(&str, &str)>,
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    let mut flags = 0x02;
    if login.is_some() {
        flags |= 0xc0;
    }
    if will.is_some() {
        flags |= 0x04;
    }
    body.extend_from_slice(&[4, flags, 0, 30]);
    string(client_id.as_bytes(), &mut body);
    if let Some((topic, payload)) = will {
        string(topic.as_bytes(), &mut body);
        string(payload, &mut body);
    }
    if let Some((user, pass)) = login {
        string(user.as_bytes(), &mut body);
        string(pass.as_bytes(), &mut body);
    }
    framed(0x10, body)
}

/// The same CONNECT with another keep-alive (seconds; 0 turns it off).
pub fn with_keep_alive(mut connect: Vec<u8>, keep_alive: u16) -> Vec<u8> {
    // Fixed header, remaining length, then "MQTT" as a string, the level and the flags.
    if let Some(name) = connect.windows(4).position(|w| w == b"MQTT") {
        connect[name + 6..name + 8].copy_from_slice(&keep_alive.to_be_bytes());
    }
    connect
}

pub fn publish_packet(topic: &str, payload: &[u8], pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    framed(0x32, body)
}

/// PUBLISH at QoS 0: no packet id, nothing comes back.
pub fn publish_qos0_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    body.extend_from_slice(payload);
    framed(0x30, body)
}

pub fn subscribe_packet(filter: &str, pkid: u16) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    string(filter.as_bytes(), &mut body);
    body.push(1);
    framed(0x82, body)
}

/// A client-side TLS config trusting only `ca_pem`.
pub fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("CA PEM parses"))
            .expect("CA is usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Test PKI: a CA, and a server certificate for localhost and 127.0.0.1 signed by it. Writes
/// `ca.pem`, `server.pem` and `server.key` into `dir`; returns the CA's PEM.
pub fn make_certificates(dir: &Path) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Fieldline test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("write");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write");
    ca.pem()
}
