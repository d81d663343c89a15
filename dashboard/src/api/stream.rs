//! `GET /api/stream`: live events as Server-Sent Events.
//!
//! Frames are written by hand (`id`, `event`, `data`), several per chunk when a client has a
//! backlog, so a busy stream costs one write per batch rather than per event. The event JSON
//! is shared by every client that receives it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::auth::Principal;
use crate::live::{Filter, Outgoing, Position};
use crate::live_clients::LiveClient;
use crate::{ApiError, AppState};

/// A comment line at least this often, so proxies and clients know the stream is alive.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// `location`, `telemetry`, `status`, `geofence`, `alert`, `command`, comma-separated.
    kinds: Option<String>,
    /// Device ids, comma-separated.
    devices: Option<String>,
    /// `west,south,east,north`: location events inside, every other kind for devices inside.
    bbox: Option<String>,
    /// Resume after this event id (`Last-Event-ID` wins when both are sent).
    since: Option<String>,
}

#[utoipa::path(get, path = "/api/stream", tag = "live", operation_id = "live_stream",
    summary = "Live events as Server-Sent Events, resumable",
    description = "Each event is `id: <id>`, `event: <kind>`, `data: <json>`. A client that sends \
        `Last-Event-ID` (or `since`) gets every matching event after it that the server holds, then \
        the live stream; when those are no longer held it first gets `event: reset` and reloads from \
        the REST API. A comment line at least every 15 s. A slow client gets the latest location or \
        telemetry of a device with `skipped`; other kinds are never dropped silently.",
    params(StreamParams, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id")),
    responses((status = 200, description = "An event stream; each `data` is a live event",
            content((super::schema::LiveEvent = "text/event-stream"))),
        super::schema::BadRequest, super::schema::Unavailable))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let filter = Filter::from_query(
        params.kinds.as_deref(),
        params.devices.as_deref(),
        params.bbox.as_deref(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    // A reconnecting EventSource repeats the URL (with its `since`) and adds the id of the
    // last event it got: the header is the newer of the two.
    let last_event_id = headers.get("last-event-id").map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<Position>().ok())
    });
    let since = match (&last_event_id, &params.since) {
        (Some(header), _) => *header,
        (None, Some(since)) => Some(
            since
                .parse::<Position>()
                .map_err(|e| ApiError::bad_request(format!("since: {e}")))?,
        ),
        (None, None) => None,
    };
    let mut subscription = state.hub.subscribe(filter, since);
    if matches!(last_event_id, Some(None)) {
        // Not an error response: the browser would retry with the same header forever.
        subscription.reset_first("Last-Event-ID is not a stream position");
    }
    let opening = opening_frame(subscription.start_position());
    let client = LiveClient::admit("sse", &state.live_slots)?;
    let revoked = state
        .access
        .clone()
        .revoked(principal.map(|Extension(p)| p));
    let events = futures_util::stream::unfold(Some((subscription, client)), |state| async move {
        let (mut subscription, client) = state?;
        match tokio::time::timeout(KEEP_ALIVE, subscription.next()).await {
            Err(_) => Some((
                Bytes::from_static(b": keep-alive\n\n"),
                Some((subscription, client)),
            )),
            Ok(batch) => {
                let (frames, closed) = frames(&batch, &client);
                Some((frames, (!closed).then_some((subscription, client))))
            }
        }
    });
    // A revoked token ends the stream with a last frame that says why.
    let was_revoked = Arc::new(AtomicBool::new(false));
    let flag = was_revoked.clone();
    let revoked = async move {
        revoked.await;
        flag.store(true, Ordering::Release);
    };
    let events = events.take_until(revoked).chain(
        futures_util::stream::once(async move {
            was_revoked
                .load(Ordering::Acquire)
                .then_some(Bytes::from_static(
                    b"event: error\ndata: {\"error\":\"the API token was revoked\"}\n\n",
                ))
        })
        .filter_map(std::future::ready),
    );
    Ok(event_stream(opening, events))
}

/// An SSE response: `opening`, then the frames of `rest` as they come, uncached and (for
/// nginx-style proxies) unbuffered.
pub(crate) fn event_stream(
    opening: Bytes,
    rest: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> Response {
    let body = futures_util::stream::once(std::future::ready(opening))
        .chain(rest)
        .map(Ok::<_, Infallible>);
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The reconnect delay for EventSource, and, for a stream that starts live, the head position
/// as an id-only frame: a client that disconnects before any event still resumes from here.
fn opening_frame(start: Option<Position>) -> Bytes {
    let mut out = String::from("retry: 1000\n");
    match start {
        Some(head) => out.push_str(&format!(": ready\nid: {head}\n\n")),
        None => out.push_str(": ready\n\n"),
    }
    Bytes::from(out)
}

/// The SSE frames for one batch, and whether the stream ends after them.
fn frames(batch: &[Outgoing], client: &LiveClient) -> (Bytes, bool) {
    let mut out = BytesMut::new();
    let mut closed = false;
    let mut events = 0;
    for item in batch {
        match item {
            Outgoing::Event { event, skipped } => {
                events += 1;
                out.put_slice(b"id: ");
                out.put_slice(event.position.to_string().as_bytes());
                out.put_slice(b"\nevent: ");
                out.put_slice(event.kind().as_bytes());
                out.put_slice(b"\ndata: ");
                out.put_slice(&event.json(*skipped));
                out.put_slice(b"\n\n");
            }
            Outgoing::Reset { reason, position } => {
                let data = serde_json::json!({ "reason": reason });
                out.put_slice(format!("id: {position}\nevent: reset\ndata: {data}\n\n").as_bytes());
            }
            Outgoing::Closed { reason } => {
                let data = serde_json::json!({ "error": reason });
                out.put_slice(format!("event: error\ndata: {data}\n\n").as_bytes());
                client.closed(reason);
                closed = true;
            }
        }
    }
    client.sent(events);
    (out.freeze(), closed)
}
