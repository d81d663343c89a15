//! History of one device: `GET /api/devices/{id}/telemetry` (raw or in buckets), `/track`
//! (thinned or exported), `/trips` and `/status`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_store::time_format::{now_ms, parse_api_time};
use fieldline_store::{BucketQuery, Range, TrackPoint};
use serde::Deserialize;

use super::buckets;
use super::checked_device_id;
use super::export::{self, TelemetryExport, TrackExport, TrackFormat};
use crate::paging::TimePager;
use crate::tracks::simplify;
use crate::tracks::trips::{Detector, Fix, Settings};
use crate::{ApiError, AppState};

const DEFAULT_SPAN_MS: i64 = 24 * 60 * 60 * 1000;
const DEFAULT_LIMIT: u32 = 10_000;
const MAX_LIMIT: u32 = 100_000;
/// Times the API accepts: 1970 to the end of year 9999, in ms.
const TIME_RANGE_MS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

/// The history endpoints' query; each reads the parameters that apply to it.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// telemetry: one metric (needed with `bucket` and `points`).
    metric: Option<String>,
    /// From (RFC 3339 or epoch ms); default `to` minus 24 hours.
    from: Option<String>,
    /// To, exclusive; default now.
    to: Option<String>,
    /// Rows, 1 to 100,000 (default 10,000).
    limit: Option<u32>,
    /// telemetry: aggregate into buckets: `1m`, `5m`, `1h`, `1d`, ... (answer header
    /// `fieldline-bucket` names the bucket used).
    bucket: Option<String>,
    /// telemetry: about this many buckets over the range, the bucket chosen to fit.
    points: Option<u32>,
    /// telemetry: `json` or `csv`; track: `json`, `geojson`, `csv` or `gpx` (a download).
    format: Option<String>,
    /// track: thin to this tolerance in metres (Douglas-Peucker), 0 to 100,000.
    simplify: Option<f64>,
    /// trips: a stop lasts at least this long, seconds.
    min_stop_s: Option<f64>,
    /// trips: slower than this counts as stopped, m/s.
    stop_speed: Option<f64>,
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

#[utoipa::path(get, path = "/api/devices/{id}/telemetry", tag = "history", operation_id = "device_telemetry",
    summary = "A device's readings, raw or in buckets, oldest first",
    params(super::DeviceId, Params),
    responses((status = 200, description = "Readings; with `bucket` or `points`, buckets; CSV with `format=csv`",
            content((Vec<fieldline_store::TelemetryPoint> = "application/json"), (String = "text/csv"))),
        super::schema::BadRequest, super::schema::NotFound, super::schema::Unavailable))]
pub async fn telemetry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let range = range(&params)?;
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv") {
        return Err(ApiError::bad_request("format must be json or csv"));
    }
    let bucket = buckets::choose(params.bucket.as_deref(), params.points, &range)?;
    let device = existing_device(&state, &id).await?;
    let Some(bucket) = bucket else {
        if format == "csv" {
            let name = export::filename(
                &format!("{device}-telemetry"),
                range.from_ms,
                range.to_ms,
                "csv",
            );
            let rows =
                TelemetryExport::new(state.store.clone(), device, params.metric.as_deref(), range);
            return Ok(export::download(rows, "text/csv", name));
        }
        let points = state
            .store
            .telemetry(device, params.metric.as_deref(), range)
            .await?;
        return Ok(Json(points).into_response());
    };
    let Some(metric) = params.metric.as_deref() else {
        return Err(ApiError::bad_request("bucket and points need metric="));
    };
    let rows = state
        .store
        .telemetry_buckets(BucketQuery {
            device,
            metric,
            from_ms: range.from_ms,
            to_ms: range.to_ms,
            bucket_ms: bucket.ms,
        })
        .await?;
    let named = [(buckets::HEADER, bucket.name.clone())];
    Ok(if format == "csv" {
        let name = export::filename(
            &format!("{device}-{metric}"),
            range.from_ms,
            range.to_ms,
            "csv",
        );
        (
            named,
            [
                (header::CONTENT_TYPE, "text/csv".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}\""),
                ),
            ],
            buckets::csv(&rows),
        )
            .into_response()
    } else {
        (named, Json(buckets::json(&rows))).into_response()
    })
}

/// Connects, disconnects (with their reasons) and published statuses, oldest first.
#[utoipa::path(get, path = "/api/devices/{id}/status", tag = "history", operation_id = "device_statuses",
    summary = "A device's connects, disconnects (with reasons) and status documents",
    params(super::DeviceId, Params),
    responses((status = 200, description = "Success", body = Vec<fieldline_store::StatusPoint>), super::schema::BadRequest,
        super::schema::NotFound, super::schema::Unavailable))]
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

#[utoipa::path(get, path = "/api/devices/{id}/track", tag = "history", operation_id = "device_track",
    summary = "A device's fixes, oldest first: thinned with `simplify`, or a GeoJSON, CSV or GPX download",
    params(super::DeviceId, Params),
    responses((status = 200, description = "Fixes",
            content((Vec<TrackPoint> = "application/json"), (Object = "application/geo+json"),
                (String = "text/csv"), (String = "application/gpx+xml"))),
        super::schema::BadRequest, super::schema::NotFound, super::schema::Unavailable))]
pub async fn track(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let range = range(&params)?;
    let format = match params.format.as_deref().unwrap_or("json") {
        "json" => None,
        "csv" => Some(TrackFormat::Csv),
        "gpx" => Some(TrackFormat::Gpx),
        "geojson" => Some(TrackFormat::GeoJson),
        _ => {
            return Err(ApiError::bad_request(
                "format must be json, geojson, csv or gpx",
            ))
        }
    };
    if let Some(tolerance) = params.simplify {
        if !(tolerance.is_finite() && tolerance > 0.0 && tolerance <= 100_000.0) {
            return Err(ApiError::bad_request(
                "simplify must be a tolerance in metres above 0 and at most 100000",
            ));
        }
    }
    let device = existing_device(&state, &id).await?;
    match (format, params.simplify) {
        // Exports of the whole range stream.
        (Some(format), None) => {
            let name = export::filename(
                &format!("{device}-track"),
                range.from_ms,
                range.to_ms,
                format.extension(),
            );
            let pages = TrackExport::new(state.store.clone(), device, range, format);
            Ok(export::download(pages, format.content_type(), name))
        }
        (None, None) => Ok(export::streamed(
            export::JsonTrack::new(state.store.clone(), device, range),
            "application/json",
        )),
        (format, simplify) => {
            let mut points = state.store.track(device, range).await?;
            if let Some(tolerance) = simplify {
                let positions: Vec<_> = points
                    .iter()
                    .map(|p| (p.location.lat, p.location.lon))
                    .collect();
                let keep = simplify::keep(&positions, tolerance);
                points = keep.into_iter().map(|i| points[i].clone()).collect();
            }
            let Some(format) = format else {
                return Ok(Json(points).into_response());
            };
            let mut out = format.head(device);
            for (i, p) in points.iter().enumerate() {
                format.row(&mut out, p, i == 0);
            }
            out.push_str(&match format {
                TrackFormat::Csv => String::new(),
                TrackFormat::Gpx => "</trkseg></trk>\n</gpx>\n".to_owned(),
                TrackFormat::GeoJson => {
                    let times: Vec<&str> = points.iter().map(|p| p.ts.as_str()).collect();
                    format!(
                        "]}},\"properties\":{{\"device\":\"{device}\",\"times\":{}}}}}]}}\n",
                        serde_json::to_string(&times).unwrap_or_else(|_| "[]".to_owned())
                    )
                }
            });
            Ok(([(header::CONTENT_TYPE, format.content_type())], out).into_response())
        }
    }
}

/// Trips and stops of the track in the range, read page by page.
#[utoipa::path(get, path = "/api/devices/{id}/trips", tag = "history", operation_id = "device_trips",
    summary = "A device's trips and stops over a range, from its fixes",
    params(super::DeviceId, Params),
    responses((status = 200, description = "Success", body = crate::tracks::trips::TripsAndStops), super::schema::BadRequest,
        super::schema::NotFound, super::schema::Unavailable))]
pub async fn trips(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let range = range(&params)?;
    let mut settings = Settings::default();
    if let Some(s) = params.min_stop_s {
        if !(s.is_finite() && (1.0..=86_400.0 * 30.0).contains(&s)) {
            return Err(ApiError::bad_request(
                "min_stop_s must be 1 to 2592000 seconds",
            ));
        }
        settings.min_stop_ms = (s * 1000.0) as i64;
    }
    if let Some(v) = params.stop_speed {
        if !(v.is_finite() && v > 0.0 && v <= 100.0) {
            return Err(ApiError::bad_request(
                "stop_speed must be above 0 and at most 100 m/s",
            ));
        }
        settings.stop_speed = v;
    }
    let device = existing_device(&state, &id).await?;
    let mut pager: TimePager<TrackPoint> =
        TimePager::new(state.store.clone(), device, range.from_ms, range.to_ms).read_ahead();
    let mut detector = Detector::new(settings);
    while let Some(page) = pager.next().await? {
        for p in page {
            detector.push(Fix {
                ts_ms: p.ts_ms,
                lat: p.location.lat,
                lon: p.location.lon,
                speed: p.location.speed,
            });
        }
    }
    Ok(Json(detector.finish()).into_response())
}
