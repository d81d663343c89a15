//! Real live-stream clients for the tests: an SSE reader over reqwest and a WebSocket client
//! over tokio-tungstenite, both parsing exactly what a browser would get.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::Server;

const WAIT: Duration = Duration::from_secs(20);

/// One SSE frame: `id`, `event` and `data` lines, or a comment.
#[derive(Debug, Default, Clone)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("frame has data")).expect("data is JSON")
    }
}

pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// Opens `/api/stream?query`, asserting 200 and the event-stream type.
    pub async fn open(server: &Server, query: &str, last_event_id: Option<&str>) -> Sse {
        let mut sse = Sse::open_at(server, &format!("/api/stream?{query}"), last_event_id).await;
        // The opening frame says the subscription is registered.
        let ready = sse.frame().await;
        assert_eq!(ready.comment.as_deref(), Some("ready"), "{ready:?}");
        sse
    }

    /// Opens any event stream at `path`, asserting 200 and the event-stream type.
    pub async fn open_at(server: &Server, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut request = server.http.get(server.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("stream request");
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "SSE content type"
        );
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame, comments included.
    pub async fn frame(&mut self) -> Frame {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let text: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "" => frame.comment = Some(value.to_string()),
                        "id" => frame.id = Some(value.to_string()),
                        "event" => frame.event = Some(value.to_string()),
                        "data" => frame.data = Some(value.to_string()),
                        "retry" => {}
                        other => panic!("unexpected SSE field {other:?} in {text:?}"),
                    }
                }
                return frame;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("SSE data within 20 s")
                .expect("SSE stream readable")
                .expect("SSE stream still open");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8"));
        }
    }

    /// The next frame that is an event (data-carrying), skipping comments and id-only frames.
    pub async fn event(&mut self) -> Frame {
        loop {
            let frame = self.frame().await;
            if frame.event.is_some() {
                return frame;
            }
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.event().await);
        }
        out
    }

    /// Reads frames until the server ends the stream; returns them.
    pub async fn until_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            if self.buffer.contains("\n\n") {
                frames.push(self.frame().await);
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("the stream ends within 20 s");
            match chunk {
                Ok(Some(chunk)) => self
                    .buffer
                    .push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8")),
                Ok(None) | Err(_) => return frames,
            }
        }
    }

    /// Asserts nothing but keep-alives arrive for `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(frame) = tokio::time::timeout(quiet, self.event()).await {
            panic!("expected no more events, got {frame:?}");
        }
    }
}

/// A WebSocket's transport: TCP, or TLS over it.
pub trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Transport for T {}

pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<Box<dyn Transport>>,
    msgpack: bool,
    pending: VecDeque<Value>,
}

impl Ws {
    /// Connects to `/api/ws` asking for `protocol`, and checks the server chose it.
    pub async fn open(server: &Server, protocol: &str) -> Ws {
        Self::open_with_query(server, protocol, "").await
    }

    /// The same, with a query string (for `access_token`).
    /// Over `wss://` when the server speaks HTTPS only.
    pub async fn open_with_query(server: &Server, protocol: &str, query: &str) -> Ws {
        let scheme = if server.ca.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://127.0.0.1:{}/api/ws?{query}", server.http_port);
        let mut request = url.into_client_request().expect("ws request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocol.parse().expect("header value"),
        );
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.http_port))
            .await
            .expect("TCP connect");
        let transport: Box<dyn Transport> = match &server.ca {
            Some(ca) => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1")
                    .expect("server name");
                Box::new(
                    super::raw_mqtt::tls_connector(ca)
                        .connect(name, tcp)
                        .await
                        .expect("TLS handshake"),
                )
            }
            None => Box::new(tcp),
        };
        let (stream, response) = tokio_tungstenite::client_async(request, transport)
            .await
            .expect("WebSocket handshake");
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            protocol,
            "the server speaks the subprotocol asked for"
        );
        Ws {
            stream,
            msgpack: protocol == "fieldline.msgpack",
            pending: VecDeque::new(),
        }
    }

    /// Sends a control message in the connection's format.
    pub async fn send(&mut self, message: &Value) {
        let frame = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(message).expect("msgpack").into())
        } else {
            Message::Text(message.to_string().into())
        };
        self.stream.send(frame).await.expect("ws send");
    }

    /// Sends a frame the server may refuse by closing the connection; whether it all went.
    pub async fn try_send_raw(&mut self, frame: Message) -> bool {
        self.stream.send(frame).await.is_ok()
    }

    pub async fn send_raw(&mut self, frame: Message) {
        self.stream.send(frame).await.expect("ws send");
    }

    /// Subscribes and returns the server's `subscribed` reply.
    pub async fn subscribe(&mut self, subscribe: Value) -> Value {
        self.send(&subscribe).await;
        let reply = self.next().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    /// The next object from the server; arrays of events are taken apart in order.
    pub async fn next(&mut self) -> Value {
        loop {
            if let Some(v) = self.pending.pop_front() {
                return v;
            }
            let message = self.frame().await;
            let value: Value = match message {
                Message::Text(t) => serde_json::from_str(&t).expect("text frames are JSON"),
                Message::Binary(b) => {
                    rmp_serde::from_slice(&b).expect("binary frames are MessagePack")
                }
                Message::Close(frame) => panic!("closed by the server: {frame:?}"),
                _ => continue,
            };
            match value {
                Value::Array(items) => {
                    assert!(items.len() > 1, "arrays carry several events");
                    self.pending.extend(items)
                }
                other => self.pending.push_back(other),
            }
        }
    }

    /// The next data frame or close frame, skipping pings and pongs.
    pub async fn frame(&mut self) -> Message {
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a WebSocket frame within 20 s")
                .expect("socket open")
                .expect("valid frame");
            if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
                return message;
            }
        }
    }

    /// The next frame as the server sent it, pings included; `None` once the socket ended.
    pub async fn raw(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.stream.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            Ok(_) => None,
            Err(_) => panic!("no WebSocket frame within 20 s"),
        }
    }

    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next().await);
        }
        out
    }
}
