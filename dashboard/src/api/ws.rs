//! `GET /api/ws`: live events over WebSocket, JSON (`fieldline.json`, text frames) or
//! MessagePack (`fieldline.msgpack`, binary frames).
//!
//! The client sends `{"type": "subscribe", ...}` (in its format) to start or change its
//! filters; the server answers `{"type": "subscribed", "id": ...}` and then sends events, a
//! single object or an array of them per frame. A new subscribe without `since` goes on from
//! the last position this socket sent, so changing filters loses no event of the new filter. Mistakes in a message get a
//! `{"type": "error"}` reply and the socket stays open; frames of the wrong type for the
//! subprotocol close it with 1003, as the WebSocket standard says.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::stream::KEEP_ALIVE;
use crate::auth::Principal;
use crate::live::{Filter, Outgoing, Position, Subscription};
use crate::live_clients::LiveClient;
use crate::replay::{Output, Place, Player, RequestError, Speed};
use crate::{ApiError, AppState};
use fieldline_store::time_format::{format_ms, parse_api_time};

/// A client that cannot take a frame for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a client may send (a subscribe naming 10,000 devices fits).
const MAX_MESSAGE: usize = 1024 * 1024;
/// Events per frame when a client has a backlog.
const EVENTS_PER_FRAME: usize = 256;

/// Close codes: 1003 unsupported data, 1008 policy violation (here: too slow).
const UNSUPPORTED_DATA: u16 = 1003;
const POLICY: u16 = 1008;

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Json,
    MessagePack,
}

/// Close code 1008 also ends a stream whose API token was revoked.
const TOKEN_REVOKED: &str = "the API token was revoked";

#[utoipa::path(get, path = "/api/ws", tag = "live", operation_id = "live_websocket",
    summary = "Live events and replays over WebSocket",
    description = "Subprotocol `fieldline.json` (text frames) or `fieldline.msgpack` (binary frames, same \
        fields). The client sends `WsClientMessage`s; the server sends live events (`LiveEvent`, one \
        per frame or an array of them) and `WsServerMessage`s.",
    params(("Sec-WebSocket-Protocol" = String, Header, description = "`fieldline.json` or `fieldline.msgpack`")),
    responses((status = 101, description = "Switched to WebSocket"),
        super::schema::Unavailable))]
pub async fn ws(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // The slot is taken before the upgrade, so a full server answers 503 instead of 101.
    let client = LiveClient::admit("ws", &state.live_slots)?;
    let principal = principal.map(|Extension(p)| p);
    Ok(upgrade
        .protocols(["fieldline.json", "fieldline.msgpack"])
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        // Clients send only small control messages: a small read buffer keeps an idle
        // connection cheap (tungstenite's default is 128 KiB per socket).
        .read_buffer_size(4 * 1024)
        // Each frame is flushed as it is sent; nothing waits to fill a buffer.
        .write_buffer_size(0)
        .on_upgrade(move |socket| session(socket, state, client, principal)))
}

/// What a WebSocket client sends on `/api/ws`: `subscribe` (filters, `since`), or for a
/// replay `replay`, then `pause`, `play`, `seek` and `speed` while it runs.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = WsClientMessage)]
pub(crate) struct Control {
    /// `subscribe`, `replay`, `pause`, `play`, `seek`, `speed` or `stop`.
    #[serde(rename = "type")]
    kind: String,
    kinds: Option<Vec<String>>,
    devices: Option<Vec<String>>,
    /// `[west, south, east, north]`.
    bbox: Option<Vec<f64>>,
    /// A live event id to resume after.
    since: Option<String>,
    // Replay's fields.
    from: Option<TextOrNumber>,
    to: Option<TextOrNumber>,
    /// 0.1 to 1000, or `max`.
    speed: Option<TextOrNumber>,
    skip_gaps: Option<TextOrNumber>,
    /// seek: where to.
    ts: Option<TextOrNumber>,
}

/// Times may be RFC 3339 text or epoch milliseconds, speeds a number or `"max"`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Integer(i64),
    Number(f64),
}

impl TextOrNumber {
    fn text(&self) -> String {
        match self {
            TextOrNumber::Text(t) => t.clone(),
            TextOrNumber::Integer(n) => n.to_string(),
            TextOrNumber::Number(n) => n.to_string(),
        }
    }
}

type Sink = SplitSink<WebSocket, Message>;

async fn session(
    socket: WebSocket,
    state: AppState,
    client: LiveClient,
    principal: Option<Principal>,
) {
    let revoked = state.access.clone().revoked(principal);
    tokio::pin!(revoked);
    let format = match socket.protocol().map(|p| p.as_bytes()) {
        Some(b"fieldline.msgpack") => Format::MessagePack,
        _ => Format::Json,
    };
    // Reading runs on its own task: polling the socket for input on every pass of the send
    // loop would make tungstenite prepare its read buffer thousands of times a second.
    let (mut socket, mut reader) = socket.split();
    let (incoming_tx, mut incoming_rx) = tokio::sync::mpsc::channel(8);
    let reading = tokio::spawn(async move {
        while let Some(message) = reader.next().await {
            let end = message.is_err();
            if incoming_tx.send(message).await.is_err() || end {
                break;
            }
        }
    });
    let mut subscription: Option<Subscription> = None;
    let mut replay: Option<Player> = None;
    // The position of the last event (or reset) sent on this socket.
    let mut cursor: Option<Position> = None;
    let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
    keep_alive.reset();
    loop {
        tokio::select! {
            incoming = incoming_rx.recv() => {
                let reply = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(text))) => control(text.as_bytes(), Format::Json, &state, &mut subscription, &mut cursor, &mut replay),
                    Some(Ok(Message::Binary(bytes))) if format == Format::MessagePack => {
                        control(&bytes, Format::MessagePack, &state, &mut subscription, &mut cursor, &mut replay)
                    }
                    Some(Ok(Message::Binary(_))) => {
                        close(&mut socket, UNSUPPORTED_DATA, "binary frames need the fieldline.msgpack subprotocol").await;
                        break;
                    }
                    Some(Ok(_)) => continue,
                };
                if send(&mut socket, encode_control(&reply, format)).await.is_err() {
                    break;
                }
            }
            batch = next(&mut subscription) => {
                let mut ended = None;
                let mut frames = Vec::new();
                let mut pending: Vec<Bytes> = Vec::new();
                let mut events = 0;
                for item in batch {
                    match item {
                        Outgoing::Event { event, skipped } => {
                            events += 1;
                            cursor = Some(event.position);
                            pending.push(match format {
                                Format::Json => event.json(skipped),
                                Format::MessagePack => event.msgpack(skipped),
                            });
                            if pending.len() == EVENTS_PER_FRAME {
                                frames.push(frame(std::mem::take(&mut pending), format));
                            }
                        }
                        Outgoing::Reset { reason, position } => {
                            cursor = Some(position);
                            if !pending.is_empty() {
                                frames.push(frame(std::mem::take(&mut pending), format));
                            }
                            let reset = serde_json::json!({"type": "reset", "reason": reason, "id": position.to_string()});
                            frames.push(encode_control(&reset, format));
                        }
                        Outgoing::Closed { reason } => ended = Some(reason),
                    }
                }
                if !pending.is_empty() {
                    frames.push(frame(pending, format));
                }
                client.sent(events);
                let failed = send_all(&mut socket, frames).await.is_err();
                if let Some(reason) = ended {
                    client.closed(reason);
                    close(&mut socket, POLICY, reason).await;
                    break;
                }
                if failed {
                    break;
                }
            }
            output = next_replay(&mut replay) => {
                let (frames, events) = replay_frames(output, &mut replay, format);
                client.sent(events);
                if send_all(&mut socket, frames).await.is_err() {
                    break;
                }
            }
            () = &mut revoked => {
                client.closed(TOKEN_REVOKED);
                close(&mut socket, POLICY, TOKEN_REVOKED).await;
                break;
            }
            _ = keep_alive.tick() => {
                if send(&mut socket, Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        }
    }
    reading.abort();
}

/// Waits for the subscription's next events; forever when there is none yet.
async fn next(subscription: &mut Option<Subscription>) -> Vec<Outgoing> {
    match subscription {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Waits for the replay's next output; forever when none runs.
async fn next_replay(replay: &mut Option<Player>) -> Output {
    match replay {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

/// The frames for one replay output and those due right after it: events (several per frame
/// when due together), clock ticks, the end. Returns how many events they carry.
fn replay_frames(
    first: Output,
    replay: &mut Option<Player>,
    format: Format,
) -> (Vec<Message>, u64) {
    let mut frames = Vec::new();
    let mut pending: Vec<Bytes> = Vec::new();
    let mut events = 0;
    let mut more = Some(first);
    while let Some(output) = more.take() {
        let control = match output {
            Output::Event { place, item } => {
                events += 1;
                let id = place.to_string();
                pending.push(Bytes::from(match format {
                    Format::Json => item.payload.to_json(&id, 0),
                    Format::MessagePack => item.payload.to_msgpack(&id, 0),
                }));
                None
            }
            Output::Clock(ts) => Some(serde_json::json!({"type": "clock", "ts": format_ms(ts)})),
            Output::End => Some(serde_json::json!({"type": "end"})),
            Output::Failed(e) => {
                tracing::warn!(error = %e, "replay cut short by a storage error");
                *replay = None;
                Some(
                    serde_json::json!({"type": "error", "error": "replay stopped: storage failed; try again"}),
                )
            }
        };
        if let Some(control) = control {
            if !pending.is_empty() {
                frames.push(frame(std::mem::take(&mut pending), format));
            }
            frames.push(encode_control(&control, format));
        }
        if pending.len() == EVENTS_PER_FRAME {
            frames.push(frame(std::mem::take(&mut pending), format));
        }
        if frames.len() < 4 {
            more = replay.as_mut().and_then(Player::next_ready);
        }
    }
    if !pending.is_empty() {
        frames.push(frame(pending, format));
    }
    (frames, events)
}

/// Replay control: start one (replacing any), pause, play, seek, change speed, stop.
fn replay_control(
    control: &Control,
    state: &AppState,
    replay: &mut Option<Player>,
) -> Result<serde_json::Value, String> {
    let text = |v: &Option<TextOrNumber>| v.as_ref().map(TextOrNumber::text);
    if control.kind == "replay" {
        let devices: Vec<&str> = control
            .devices
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let kinds: Vec<&str> = control.kinds.iter().flatten().map(String::as_str).collect();
        let request = super::replay::checked(
            &devices,
            text(&control.from).as_deref(),
            text(&control.to).as_deref(),
            text(&control.speed).as_deref(),
            &kinds,
            text(&control.skip_gaps).as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let resume = match control.since.as_deref() {
            None => None,
            Some(s) => Some(
                s.parse::<Place>()
                    .map_err(|()| "since is not a place in a replay".to_owned())?,
            ),
        };
        let player = Player::new(state.store.clone(), request, resume)
            .map_err(|_| "since is not a place in this replay's range".to_owned())?;
        let mut reply = player.request().describe();
        reply["type"] = "replay".into();
        *replay = Some(player);
        return Ok(reply);
    }
    let player = replay.as_mut().ok_or_else(|| {
        format!(
            "no replay is running: send {{\"type\": \"replay\", ...}} before {:?}",
            control.kind
        )
    })?;
    match control.kind.as_str() {
        "pause" => player.pause(),
        "play" => player.play(),
        "speed" => {
            let speed = text(&control.speed).ok_or(RequestError::Speed.to_string())?;
            player.set_speed(Speed::parse(&speed).map_err(|e| e.to_string())?);
        }
        "seek" => {
            let ts = text(&control.ts)
                .and_then(|t| parse_api_time(&t))
                .ok_or(RequestError::Seek.to_string())?;
            player.seek(ts).map_err(|e| e.to_string())?;
        }
        _ => {
            *replay = None;
            return Ok(serde_json::json!({"type": "stopped"}));
        }
    }
    Ok(serde_json::json!({
        "type": "replay_state",
        "state": if player.paused() { "paused" } else { "playing" },
        "ts": format_ms(player.now_ts()),
        "speed": player.speed().to_json(),
    }))
}

/// Applies one client message; returns the reply.
fn control(
    bytes: &[u8],
    format: Format,
    state: &AppState,
    subscription: &mut Option<Subscription>,
    cursor: &mut Option<Position>,
    replay: &mut Option<Player>,
) -> serde_json::Value {
    let parsed: Result<Control, String> = match format {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        Format::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
    };
    let error = |message: String| serde_json::json!({"type": "error", "error": message});
    let control = match parsed {
        Ok(c) => c,
        Err(e) => return error(format!("malformed message: {e}")),
    };
    if matches!(
        control.kind.as_str(),
        "replay" | "pause" | "play" | "seek" | "speed" | "stop"
    ) {
        return replay_control(&control, state, replay).unwrap_or_else(error);
    }
    if control.kind != "subscribe" {
        return error(format!(
            "unknown message type {:?}: send {{\"type\": \"subscribe\", ...}} or {{\"type\": \"replay\", ...}}",
            control.kind.chars().take(64).collect::<String>()
        ));
    }
    let filter = match Filter::from_lists(control.kinds, control.devices, control.bbox) {
        Ok(f) => f,
        Err(e) => return error(e.to_string()),
    };
    let since = match control.since.as_deref().map(str::parse::<Position>) {
        None => *cursor,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return error(format!("since: {e}")),
    };
    // The old subscription ends first, so the client is never registered twice.
    *subscription = None;
    let fresh = state.hub.subscribe(filter, since);
    *cursor = fresh.start_position().or(since);
    let id = cursor.map(|p| p.to_string());
    *subscription = Some(fresh);
    serde_json::json!({"type": "subscribed", "id": id})
}

fn encode_control(value: &serde_json::Value, format: Format) -> Message {
    match format {
        Format::Json => Message::Text(Utf8Bytes::from(value.to_string())),
        Format::MessagePack => Message::Binary(Bytes::from(
            rmp_serde::to_vec_named(value).unwrap_or_default(),
        )),
    }
}

/// One frame: the event itself, or an array of events.
fn frame(events: Vec<Bytes>, format: Format) -> Message {
    if events.len() == 1 {
        let only = events.into_iter().next().unwrap_or_default();
        return match format {
            Format::Json => text(only),
            Format::MessagePack => Message::Binary(only),
        };
    }
    let size: usize = events.iter().map(Bytes::len).sum::<usize>() + events.len() + 8;
    let mut out = BytesMut::with_capacity(size);
    match format {
        Format::Json => {
            out.put_u8(b'[');
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                out.put_slice(e);
            }
            out.put_u8(b']');
            text(out.freeze())
        }
        Format::MessagePack => {
            // MessagePack array header, then the maps as they are.
            match events.len() {
                n @ 0..=15 => out.put_u8(0x90 | n as u8),
                n @ 16..=0xffff => {
                    out.put_u8(0xdc);
                    out.put_u16(n as u16);
                }
                n => {
                    out.put_u8(0xdd);
                    out.put_u32(n as u32);
                }
            }
            for e in &events {
                out.put_slice(e);
            }
            Message::Binary(out.freeze())
        }
    }
}

fn text(json: Bytes) -> Message {
    // serde_json only writes UTF-8.
    match Utf8Bytes::try_from(json) {
        Ok(t) => Message::Text(t),
        Err(_) => Message::Text(Utf8Bytes::from_static("{}")),
    }
}

/// Sends `frames` in order, stopping at the first that fails.
async fn send_all(socket: &mut Sink, frames: Vec<Message>) -> Result<(), ()> {
    for f in frames {
        send(socket, f).await?;
    }
    Ok(())
}

async fn send(socket: &mut Sink, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(()),
        Err(_) => {
            metrics::counter!("fieldline_live_disconnects_total", "reason" => "write_timeout")
                .increment(1);
            Err(())
        }
    }
}

async fn close(socket: &mut Sink, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = send(socket, Message::Close(Some(frame))).await;
}
