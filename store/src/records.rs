//! Rows as both back ends read them, and the API shapes they become. Each back end differs only
//! in its SQL; what a row means is decided here, once.

use super::{DeviceSummary, RejectedMessage, StatusPoint, StreamSeq, TelemetryPoint, TrackPoint};
use crate::batch::{DeviceUpdate, PositionRow};
use crate::time_format::format_ms;
use crate::Kind;

/// device_id, first_seen ms, last_seen ms, last_location JSON, last_metrics JSON, online.
pub(crate) type DeviceRecord = (String, i64, i64, Option<String>, Option<String>, bool);
/// time ms, seq, online, reason.
pub(crate) type StatusRecord = (i64, Option<i64>, bool, Option<String>);
/// time ms, seq, metric, value.
pub(crate) type TelemetryRecord = (i64, Option<i64>, String, f64);
/// time ms, seq, lat, lon, speed, heading, alt, accuracy.
pub(crate) type TrackRecord = (
    i64,
    Option<i64>,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);
/// id, received ms, topic, device, reason, detail, payload size, payload preview.
pub(crate) type RejectedRecord = (
    i64,
    i64,
    String,
    Option<String>,
    String,
    String,
    i64,
    String,
);
/// device, kind, seq and time (ms) of the stream's newest document.
pub(crate) type StreamSeqRecord = (String, String, i64, i64);

/// seq is unsigned 64-bit in the contract; both databases keep it in a signed 64-bit column,
/// bit for bit.
pub(crate) fn seq_to_db(seq: Option<u64>) -> Option<i64> {
    seq.map(|s| s as i64)
}

/// Log positions count up from 1 and stay far below 2^63.
pub(crate) fn position_to_db(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

fn seq_from_db(seq: Option<i64>) -> Option<u64> {
    seq.map(|s| s as u64)
}

pub(crate) fn device_summary(
    (id, first_seen, last_seen, location, metrics, online): DeviceRecord,
) -> DeviceSummary {
    DeviceSummary {
        id,
        first_seen: format_ms(first_seen),
        last_seen: format_ms(last_seen),
        online,
        location: location.and_then(|l| serde_json::from_str(&l).ok()),
        metrics: metrics_for_api(metrics.as_deref()),
    }
}

pub(crate) fn status_point((ts, seq, online, reason): StatusRecord) -> StatusPoint {
    StatusPoint {
        ts_ms: ts,
        ts: format_ms(ts),
        seq: seq_from_db(seq),
        online,
        reason,
    }
}

pub(crate) fn telemetry_point((ts, seq, metric, value): TelemetryRecord) -> TelemetryPoint {
    TelemetryPoint {
        ts_ms: ts,
        ts: format_ms(ts),
        seq: seq_from_db(seq),
        metric,
        value,
    }
}

pub(crate) fn track_point(
    (ts, seq, lat, lon, speed, heading, alt, accuracy): TrackRecord,
) -> TrackPoint {
    TrackPoint {
        ts_ms: ts,
        ts: format_ms(ts),
        seq: seq_from_db(seq),
        location: crate::Location {
            lat,
            lon,
            speed,
            heading,
            alt,
            accuracy,
        },
    }
}

pub(crate) fn rejected_message(
    (id, received_ms, topic, device, reason, detail, payload_size, payload_preview): RejectedRecord,
) -> RejectedMessage {
    RejectedMessage {
        id,
        received_at: format_ms(received_ms),
        topic,
        device,
        reason,
        detail,
        payload_size,
        payload_preview,
    }
}

pub(crate) fn stream_seq((device, kind, seq, ts_ms): StreamSeqRecord) -> Option<StreamSeq> {
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some(StreamSeq {
        device,
        kind,
        seq: seq as u64,
        ts_ms,
    })
}

/// The `location` object of a device summary, as stored.
pub(crate) fn location_json(row: &PositionRow) -> String {
    serde_json::json!({
        "ts": format_ms(row.ts_ms),
        "seq": row.seq,
        "lat": row.location.lat,
        "lon": row.location.lon,
        "speed": row.location.speed,
        "heading": row.location.heading,
        "alt": row.location.alt,
        "accuracy": row.location.accuracy,
    })
    .to_string()
}

/// The `metrics` object stored for a device update: `{"name": {"ts_ms": …, "value": …}}`.
/// Times stay in ms so the stores can merge objects without parsing them.
pub(crate) fn metrics_json(update: &DeviceUpdate) -> String {
    let map: serde_json::Map<String, serde_json::Value> = update
        .metrics
        .iter()
        .map(|(name, (ts, value))| {
            (
                name.to_string(),
                serde_json::json!({"ts_ms": ts, "value": value}),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// The stored metrics object with its times as RFC 3339, for the API.
fn metrics_for_api(stored: Option<&str>) -> serde_json::Value {
    let Some(Ok(serde_json::Value::Object(map))) =
        stored.map(serde_json::from_str::<serde_json::Value>)
    else {
        return serde_json::json!({});
    };
    let out = map
        .into_iter()
        .map(|(name, v)| {
            let ts = v.get("ts_ms").and_then(|t| t.as_i64()).map(format_ms);
            (name, serde_json::json!({"ts": ts, "value": v.get("value")}))
        })
        .collect();
    serde_json::Value::Object(out)
}
