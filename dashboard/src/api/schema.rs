//! The shapes the OpenAPI description gives for what handlers pass through or write by hand:
//! stored GeoJSON and rule objects, events (serialized field by field for speed), commands,
//! and the live streams' messages. Types the handlers answer with directly derive their own
//! schemas where they are defined.

#![allow(dead_code)] // Read by the schema derive only.

use serde_json::Value;
use utoipa::{IntoResponses, ToSchema};

/// Every error: a status and the reason, for a person.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// What was wrong, and what to do about it where that can be said.
    error: String,
}

/// A geofence: a GeoJSON Feature (Polygon, MultiPolygon, Point with `radius_m`, or
/// LineString with `width_m`), returned with the `id` it was stored under.
#[derive(ToSchema)]
#[schema(example = json!({"type": "Feature", "id": 7,
    "geometry": {"type": "Point", "coordinates": [13.38, 52.515]},
    "properties": {"name": "Depot", "radius_m": 150, "devices": ["truck-*"]}}))]
pub struct Geofence {
    /// `Feature`.
    r#type: String,
    /// Given by the server; ignored in a request body.
    id: Option<i64>,
    /// A GeoJSON geometry, `[lon, lat]` coordinates.
    #[schema(value_type = Object)]
    geometry: Value,
    properties: GeofenceProperties,
}

#[derive(ToSchema)]
pub struct GeofenceProperties {
    name: String,
    /// Exact ids or prefixes ending in `*`; absent: every device.
    devices: Option<Vec<String>>,
    /// Circle radius for a Point, metres.
    radius_m: Option<f64>,
    /// Corridor width for a LineString, metres.
    width_m: Option<f64>,
    /// An `overspeed` event when inside above this speed for `overspeed_s`, m/s.
    speed_limit: Option<f64>,
    /// Seconds above `speed_limit` before `overspeed` (default 10).
    overspeed_s: Option<f64>,
    /// A `dwell` event after this long inside, seconds.
    dwell_s: Option<f64>,
    /// Metres past the boundary before a fix counts as outside (default 10).
    buffer_m: Option<f64>,
    /// Fixes less accurate than this change nothing, metres (default 100).
    max_accuracy_m: Option<f64>,
    /// Fixes on the new side that confirm a change (default 2).
    confirm_fixes: Option<u32>,
}

/// A GeoJSON FeatureCollection of geofences.
#[derive(ToSchema)]
pub struct GeofenceCollection {
    /// `FeatureCollection`.
    r#type: String,
    features: Vec<Geofence>,
}

/// A geofence a device is inside now.
#[derive(ToSchema)]
pub struct Inside {
    geofence: i64,
    name: String,
    /// Since when (RFC 3339).
    since: String,
}

/// An alert rule: a threshold on a metric (`above` or `below`), an offline rule
/// (`offline_for_s`) or a stale rule (`stale_for_s`, with or without `metric`); returned with
/// its `id`.
#[derive(ToSchema)]
#[schema(example = json!({"id": 3, "name": "Cold chain", "devices": ["fridge-*"],
    "metric": "temp_c", "above": 8.0, "clear_below": 7.5, "for_s": 120}))]
pub struct AlertRule {
    /// Given by the server; ignored in a request body.
    id: Option<i64>,
    name: String,
    devices: Option<Vec<String>>,
    metric: Option<String>,
    above: Option<f64>,
    below: Option<f64>,
    clear_below: Option<f64>,
    clear_above: Option<f64>,
    /// How long the condition must hold, in device time, seconds.
    for_s: Option<f64>,
    /// Raised when a device has been offline this long, seconds.
    offline_for_s: Option<f64>,
    /// Raised when a connected device has sent no value of `metric` (without `metric`: no
    /// fix) for this long, seconds; cleared by the next one.
    stale_for_s: Option<f64>,
    /// Of the alarms it opens: `critical`, `major` (default), `minor` or `warning`.
    severity: Option<String>,
}

/// A stored event (`GET /api/events`, webhooks): `seq`, `kind`, `device`, `ts`, then the
/// kind's own fields.
#[derive(ToSchema)]
pub struct StoredEvent {
    /// Its place among stored events: `after` pages from it.
    seq: u64,
    /// `geofence`, `alert`, `alarm` or `command`.
    kind: String,
    device: String,
    /// Device time of the fix or reading it is about (RFC 3339).
    ts: String,
    lat: Option<f64>,
    lon: Option<f64>,
    #[serde(flatten)]
    fields: DerivedFields,
}

/// The fields of stored (derived) events beside `kind`, `device` and `ts`, by kind.
#[derive(ToSchema)]
pub struct DerivedFields {
    /// geofence: the fence's id.
    geofence: Option<i64>,
    /// alert, alarm: the rule's id.
    rule: Option<i64>,
    /// The fence's or rule's name, or the command's.
    name: Option<String>,
    /// geofence: `enter`, `exit`, `dwell` or `overspeed`.
    event: Option<String>,
    /// alert: `raised` or `cleared`; alarm: `active`, `acknowledged` or `cleared`; command:
    /// its new state.
    state: Option<String>,
    metric: Option<String>,
    value: Option<f64>,
    /// command: its id.
    command: Option<String>,
    /// command: the device's reply.
    #[schema(value_type = Option<Object>)]
    reply: Option<Value>,
    /// alarm: its id.
    alarm: Option<i64>,
    /// alert, alarm: `critical`, `major`, `minor` or `warning`.
    severity: Option<String>,
    /// alarm: `raised`, `repeated`, `acknowledged`, `assigned`, `noted` or `cleared`.
    change: Option<String>,
    /// alarm: how many raises it took.
    count: Option<i64>,
    /// alarm: who did it (none: the rule).
    by: Option<String>,
    assignee: Option<String>,
}

/// A command as the ledger keeps it.
#[derive(ToSchema)]
pub struct Command {
    id: String,
    device: String,
    name: String,
    /// The JSON payload (or `payload_b64` for bytes that are not JSON).
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    payload_b64: Option<String>,
    qos: i32,
    /// `queued`, `sent`, `delivered`, `replied`, `failed`, `expired` or `cancelled`.
    state: String,
    created: String,
    expires: String,
    updated: String,
    sent: Option<String>,
    delivered: Option<String>,
    replied: Option<String>,
    /// How often it was published to the device.
    attempts: i32,
    #[schema(value_type = Option<Object>)]
    reply: Option<Value>,
    /// The name of the API token that sent it.
    created_by: Option<String>,
}

/// An alarm: opened by an alert rule's `raised` (one per rule and device; a repeat while open
/// updates it), worked by people, cleared by the rule or by hand.
#[derive(ToSchema)]
pub struct Alarm {
    id: i64,
    rule: i64,
    device: String,
    /// The rule's name.
    name: String,
    /// `critical`, `major`, `minor` or `warning`, from the rule.
    severity: String,
    /// `active`, `acknowledged` or `cleared`.
    state: String,
    /// Device time of the raise that opened it.
    raised: String,
    updated: String,
    /// Raises it took.
    count: i64,
    metric: Option<String>,
    /// The newest value that raised it.
    value: Option<f64>,
    acknowledged: Option<ByWhen>,
    /// `by` is null when the rule cleared it.
    cleared: Option<ByWhen>,
    assignee: Option<String>,
    notes: Vec<AlarmNote>,
}

#[derive(ToSchema)]
pub struct ByWhen {
    by: Option<String>,
    ts: String,
}

#[derive(ToSchema)]
pub struct AlarmNote {
    by: String,
    ts: String,
    text: String,
}

/// A live event (`/api/stream` data, `/api/ws` messages): always `kind`, `id`, `device` and
/// `ts`, plus the kind's fields.
#[derive(ToSchema)]
#[schema(example = json!({"kind": "location", "id": "7-1042", "device": "truck-7",
    "ts": "2026-12-06T10:00:00.000Z", "seq": 12, "lat": 52.52, "lon": 13.405, "speed": 8.3}))]
pub struct LiveEvent {
    /// `location`, `telemetry`, `status`, `geofence`, `alert`, `alarm` or `command`.
    kind: String,
    /// The stream position: opaque, sent back as `Last-Event-ID` or `since` to resume.
    id: String,
    device: String,
    ts: String,
    /// location, telemetry: the device's sequence number, when it sent one.
    seq: Option<u64>,
    lat: Option<f64>,
    lon: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
    alt: Option<f64>,
    accuracy: Option<f64>,
    /// telemetry: `{"name": value}`.
    #[schema(value_type = Option<Object>)]
    metrics: Option<Value>,
    /// status.
    online: Option<bool>,
    /// status offline: `disconnect`, `dropped`, `keepalive`, `will` or `kicked`.
    reason: Option<String>,
    /// location, telemetry sent to a slow client: how many of the device's events of this
    /// kind were skipped before this one.
    skipped: Option<u64>,
    /// geofence, alert, alarm, command: their own fields.
    #[serde(flatten)]
    fields: DerivedFields,
}

/// What the server sends on `/api/ws` besides events: `subscribed`, `reset` (reload from the
/// REST API: the events after `since` are no longer held), `error` (the socket stays open),
/// and for a replay `replay`, `replay_state`, `clock`, `end` and `stopped`.
#[derive(ToSchema)]
pub struct WsServerMessage {
    r#type: String,
    /// subscribed, reset: the position the stream goes on from.
    id: Option<String>,
    /// reset: why.
    reason: Option<String>,
    /// error: what was wrong with the message.
    error: Option<String>,
    /// clock: the replay's time.
    ts: Option<String>,
}

/// 400.
#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "The request is not valid; `error` says why"
)]
pub struct BadRequest(#[to_schema] ErrorBody);

/// 403.
#[derive(IntoResponses)]
#[response(
    status = 403,
    description = "The token's role may not do this (admin, or operator for commands)"
)]
pub struct Forbidden(#[to_schema] ErrorBody);

/// 404.
#[derive(IntoResponses)]
#[response(status = 404, description = "No such thing")]
pub struct NotFound(#[to_schema] ErrorBody);

/// 409.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "It is past the point where that can be done, or exists already"
)]
pub struct Conflict(#[to_schema] ErrorBody);

/// 503.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "Storage is unavailable, or no live stream slot is free; try again"
)]
pub struct Unavailable(#[to_schema] ErrorBody);
