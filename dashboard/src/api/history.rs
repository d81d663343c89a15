//! Raw history of one device: `GET /api/devices/{id}/telemetry`, `/track` and `/status`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_ingest::store::{Range, TrackPoint};
use fieldline_ingest::time_format::{now_ms, parse_api_time};
use serde::Deserialize;

use super::checked_device_id;
use crate::{ApiError, AppState};

const DEFAULT_SPAN_MS: i64 = 24 * 60 * 60 * 1000;
const DEFAULT_LIMIT: u32 = 10_000;
const MAX_LIMIT: u32 = 100_000;
/// Times the API accepts: 1970 to the end of year 9999, in ms.
const TIME_RANGE_MS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

#[derive(Deserialize)]
pub struct Params {
    metric: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    bucket: Option<String>,
    format: Option<String>,
}

/// `[from, to)`; without them, the last 24 hours.
fn range(params: &Params) -> Result<Range, ApiError> {
    let parse = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|t| {
                parse_api_time(t)
                    .filter(|ms| TIME_RANGE_MS.contains(ms))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{name} must be RFC 3339 or epoch milliseconds, from 1970 to 9999"
                        ))
                    })
            })
            .transpose()
    };
    let now_ms = now_ms();
    // Include the 5 minutes of clock skew devices are allowed.
    let to_ms = parse("to", &params.to)?.unwrap_or(now_ms + 5 * 60 * 1000 + 1);
    let from_ms =
        parse("from", &params.from)?.unwrap_or(to_ms.saturating_sub(DEFAULT_SPAN_MS).max(0));
    if from_ms > to_ms {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    let limit = super::checked_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok(Range {
        from_ms,
        to_ms,
        limit,
    })
}

async fn existing_device<'a>(state: &AppState, id: &'a str) -> Result<&'a str, ApiError> {
    let id = checked_device_id(id)?;
    match state.store.device(id).await? {
        Some(_) => Ok(id),
        None => Err(ApiError::not_found(format!("no device {id}"))),
    }
}

pub async fn telemetry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    if params.bucket.is_some() {
        return Err(ApiError::bad_request(
            "bucketed aggregates are not available yet; omit bucket for raw points",
        ));
    }
    let range = range(&params)?;
    let device = existing_device(&state, &id).await?;
    let points = state
        .store
        .telemetry(device, params.metric.as_deref(), range)
        .await?;
    Ok(Json(points).into_response())
}

/// Connects, disconnects (with their reasons) and published statuses, oldest first.
pub async fn statuses(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let range = range(&params)?;
    let device = existing_device(&state, &id).await?;
    Ok(Json(state.store.statuses(device, range).await?).into_response())
}

pub async fn track(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let range = range(&params)?;
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "geojson" | "csv" | "gpx") {
        return Err(ApiError::bad_request(
            "format must be json, geojson, csv or gpx",
        ));
    }
    let device = existing_device(&state, &id).await?;
    let points = state.store.track(device, range).await?;
    Ok(match format {
        "geojson" => (
            [(header::CONTENT_TYPE, "application/geo+json")],
            Json(geojson(device, &points)),
        )
            .into_response(),
        "csv" => ([(header::CONTENT_TYPE, "text/csv")], csv(&points)).into_response(),
        "gpx" => (
            [(header::CONTENT_TYPE, "application/gpx+xml")],
            gpx(device, &points),
        )
            .into_response(),
        _ => Json(points).into_response(),
    })
}

fn geojson(device: &str, points: &[TrackPoint]) -> serde_json::Value {
    let coordinates: Vec<_> = points
        .iter()
        .map(|p| serde_json::json!([p.lon, p.lat]))
        .collect();
    let times: Vec<_> = points.iter().map(|p| p.ts.as_str()).collect();
    serde_json::json!({
        "type": "FeatureCollection",
        "features": [{
            "type": "Feature",
            "geometry": { "type": "LineString", "coordinates": coordinates },
            "properties": { "device": device, "times": times },
        }],
    })
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn csv(points: &[TrackPoint]) -> String {
    let mut out = String::from("ts,seq,lat,lon,speed,heading,alt,accuracy\n");
    for p in points {
        let seq = p.seq.map(|s| s.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            p.ts,
            seq,
            p.lat,
            p.lon,
            opt(p.speed),
            opt(p.heading),
            opt(p.alt),
            opt(p.accuracy)
        ));
    }
    out
}

fn gpx(device: &str, points: &[TrackPoint]) -> String {
    // Device ids are [A-Za-z0-9_.-] and times RFC 3339: nothing here needs XML escaping.
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<gpx version=\"1.1\" creator=\"fieldline\" xmlns=\"http://www.topografix.com/GPX/1/1\">\n<trk><name>{device}</name><trkseg>\n"
    );
    for p in points {
        out.push_str(&format!("<trkpt lat=\"{}\" lon=\"{}\">", p.lat, p.lon));
        if let Some(alt) = p.alt {
            out.push_str(&format!("<ele>{alt}</ele>"));
        }
        out.push_str(&format!("<time>{}</time></trkpt>\n", p.ts));
    }
    out.push_str("</trkseg></trk>\n</gpx>\n");
    out
}
