//! `GET /api/replay`: stored history of several devices as Server-Sent Events, paced by a
//! speed. Opens with `event: replay`, sends `event: clock` at least once a second, and ends
//! with `event: end`; each event's id is its place, so a reconnect goes on from there.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use fieldline_store::time_format::format_ms;
use serde::Deserialize;

use crate::live_clients::LiveClient;
use crate::replay::{Output, Place, Player, Request, RequestError, Speed};
use crate::{ApiError, AppState};

/// Events per chunk when they are due together (fast replays).
const EVENTS_PER_CHUNK: usize = 256;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// Device ids, comma-separated.
    devices: Option<String>,
    /// RFC 3339 or epoch ms.
    from: Option<String>,
    to: Option<String>,
    /// 0.1 to 1000, or `max` (as fast as the client reads); default 1.
    speed: Option<String>,
    /// `location`, `telemetry`, `status`, `geofence`, `alert`, comma-separated.
    kinds: Option<String>,
    /// Jump over quiet stretches longer than this many seconds.
    skip_gaps: Option<String>,
}

fn split(text: &Option<String>) -> Vec<&str> {
    text.as_deref()
        .map(|t| t.split(',').collect())
        .unwrap_or_default()
}

/// A request from its query (SSE) or message (WebSocket) fields.
pub(crate) fn checked(
    devices: &[&str],
    from: Option<&str>,
    to: Option<&str>,
    speed: Option<&str>,
    kinds: &[&str],
    skip_gaps: Option<&str>,
) -> Result<Request, RequestError> {
    let speed = match speed {
        None => Speed::Times(1.0),
        Some(s) => Speed::parse(s)?,
    };
    let skip_gaps = match skip_gaps {
        None => None,
        Some(s) => Some(
            s.trim()
                .parse::<i64>()
                .map_err(|_| RequestError::SkipGaps)?,
        ),
    };
    Request::new(devices, from, to, speed, kinds, skip_gaps)
}

#[utoipa::path(get, path = "/api/replay", tag = "live", operation_id = "replay",
    summary = "Stored history of devices as Server-Sent Events, paced by a speed",
    description = "Opens with `event: replay` (range, devices, speed), sends the stored events with the \
        fields of live events (each `id` is its place: a reconnect with `Last-Event-ID` goes on from \
        there), `event: clock` at least once a second of replay, and ends with `event: end`.",
    params(Params, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this place")),
    responses((status = 200, description = "An event stream; each `data` is a live event",
            content((super::schema::LiveEvent = "text/event-stream"))),
        super::schema::BadRequest, super::schema::Unavailable))]
pub async fn replay(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let bad = |e: RequestError| ApiError::bad_request(e.to_string());
    let request = checked(
        &split(&params.devices),
        params.from.as_deref(),
        params.to.as_deref(),
        params.speed.as_deref(),
        &split(&params.kinds),
        params.skip_gaps.as_deref(),
    )
    .map_err(bad)?;
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<Place>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not a place in a replay"))?,
        ),
    };
    let mut player = Player::new(state.store.clone(), request, resume).map_err(|_| {
        ApiError::bad_request("Last-Event-ID is not a place in this replay's range")
    })?;
    let client = LiveClient::admit("replay", &state.live_slots)?;
    // The first chunks are read before the opening event: replay time starts with it.
    player.prepare().await?;
    let opening = {
        let mut out = String::from("retry: 1000\nevent: replay\ndata: ");
        out.push_str(&player.request().describe().to_string());
        out.push_str("\n\n");
        Bytes::from(out)
    };
    let frames = futures_util::stream::unfold(Some((player, client)), |state| async move {
        let (mut player, client) = state?;
        let first = player.next().await;
        let mut out = BytesMut::new();
        let mut events: u64 = 0;
        let mut more = Some(first);
        let mut ended = false;
        while let Some(output) = more.take() {
            match output {
                Output::Event { place, item } => {
                    events += 1;
                    out.put_slice(
                        format!("id: {place}\nevent: {}\ndata: ", item.payload.kind()).as_bytes(),
                    );
                    out.put_slice(&item.payload.to_json(&place.to_string(), 0));
                    out.put_slice(b"\n\n");
                }
                Output::Clock(ts) => {
                    let data = serde_json::json!({ "ts": format_ms(ts) });
                    out.put_slice(format!("event: clock\ndata: {data}\n\n").as_bytes());
                }
                Output::End => {
                    out.put_slice(b"event: end\ndata: {}\n\n");
                    ended = true;
                }
                Output::Failed(e) => {
                    tracing::warn!(error = %e, "replay cut short by a storage error");
                    let data = serde_json::json!({ "error": "storage failed; try again" });
                    out.put_slice(format!("event: error\ndata: {data}\n\n").as_bytes());
                    ended = true;
                }
            }
            if !ended && events < EVENTS_PER_CHUNK as u64 {
                more = player.next_ready();
            }
        }
        client.sent(events);
        Some((out.freeze(), (!ended).then_some((player, client))))
    });
    Ok(super::stream::event_stream(opening, frames))
}
